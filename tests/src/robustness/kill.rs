//! Running one executor command: undisturbed while counting its commit points (the dry
//! run), or with SIGKILL aimed at one of them, and telling how it ended.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::points::{Counts, SYSCALLS, Trigger};
use super::tools::Tools;

/// Longest any single executor or restic run may take before it counts as hung.
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// One executor invocation: arguments and environment, without the program.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

/// A finished process: status and what it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "{}\nstdout: {}\nstderr: {}",
            self.status,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Run `cmd` to completion, or kill it (and fail) after [`RUN_DEADLINE`].
pub fn run(mut cmd: Command) -> Result<Finished> {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child.id() as libc::pid_t;
    // The waiting happens on a thread so the deadline is a receive timeout, not a poll.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(RUN_DEADLINE) {
        Ok(out) => out?,
        Err(_) => {
            // SAFETY: signalling our own child, which has not been reaped (the thread
            // still waits for it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            bail!("{what} did not finish within {RUN_DEADLINE:?}; killed it");
        }
    };
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// How a run aimed at a kill point ended.
#[derive(Debug)]
pub enum Outcome {
    /// SIGKILL at the point: what the point is for. For a syscall point, the call that was
    /// killed as strace logged it (which file was being renamed, synced, ...).
    Killed(Option<String>),
    /// The command ended normally before the point came: "not reached".
    Completed,
    /// It failed on its own, or died of something else.
    Failed(String),
}

/// Run the command with SIGKILL at the n-th occurrence of `trigger`. Syscall points run the
/// workspace executor under strace; failpoints run the failpoint build.
pub fn run_killed(
    tools: &Tools,
    inv: &Invocation,
    trigger: &Trigger,
    n: u32,
    log: &Path,
) -> Result<Outcome> {
    let (mut cmd, strace) = match trigger {
        Trigger::Syscall(sys) => {
            let mut c = Command::new(&tools.strace);
            // strace 6.1 injects only into syscalls it traces (`-e trace=none` disarms the
            // injection), so the log shows every call of this syscall, the killed one
            // last (`= ?`), then `+++ killed by SIGKILL +++`: the second witness of the
            // kill, besides strace re-raising the tracee's signal on itself.
            c.args(["-f", "-q", "-o"])
                .arg(log)
                .arg("-e")
                .arg(format!("trace={sys}"))
                .arg("-e")
                .arg(format!("inject={sys}:signal=SIGKILL:when={n}"))
                .arg("--")
                .arg(&tools.fleetsnap);
            (c, true)
        }
        Trigger::Failpoint(name) => {
            let mut c = Command::new(&tools.fleetsnap_failpoints);
            c.env("FLEETSNAP_FAILPOINTS", format!("{name}={n}"));
            (c, false)
        }
    };
    cmd.args(&inv.args)
        .envs(inv.env.iter().map(|(k, v)| (k, v)));
    let f = run(cmd)?;
    Ok(classify(&f, strace.then_some(log)))
}

fn classify(f: &Finished, strace_log: Option<&Path>) -> Outcome {
    match f.status.signal() {
        Some(libc::SIGKILL) => {
            let Some(log) = strace_log else {
                return Outcome::Killed(None);
            };
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if !text.contains("+++ killed by SIGKILL +++") {
                return Outcome::Failed(format!(
                    "strace died of SIGKILL but its log does not say the executor was \
                     killed: {}",
                    tail(&text)
                ));
            }
            Outcome::Killed(killed_call(&text))
        }
        Some(sig) => Outcome::Failed(format!("died of signal {sig}\n{}", f.describe())),
        None if f.status.success() => Outcome::Completed,
        None => Outcome::Failed(format!("failed on its own: {}", f.describe())),
    }
}

/// The call strace logged as never returning (`= ?`): the injected one. If it was logged
/// in two halves (`<unfinished ...>`, `<... resumed>`), the first half names it.
fn killed_call(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let i = lines.iter().position(|l| l.trim_end().ends_with("= ?"))?;
    let (pid, rest) = lines[i].split_once(' ').unwrap_or(("", lines[i]));
    let rest = rest.trim();
    if !rest.starts_with("<...") {
        return Some(rest.to_string());
    }
    let start = lines[..i].iter().rev().find(|l| {
        l.split_once(' ')
            .is_some_and(|(p, r)| p == pid && r.contains("<unfinished"))
    })?;
    Some(
        start
            .split_once(' ')
            .map_or(*start, |(_, r)| r)
            .trim()
            .to_string(),
    )
}

/// An undisturbed run that counts every commit syscall per thread (strace) and every
/// failpoint hit (the failpoint build's tally), so points are picked among real ones. Runs
/// the failpoint build: its syscalls are those of the workspace build (a hit writes to the
/// tally with `write`, which is no commit syscall).
pub fn dry_run(
    tools: &Tools,
    inv: &Invocation,
    dir: &Path,
    count_syscalls: bool,
) -> Result<(Counts, Finished)> {
    let tally = dir.join("dry.tally");
    let trace = dir.join("dry.strace");
    let _ = std::fs::remove_file(&tally);
    let mut cmd = if count_syscalls {
        let mut c = Command::new(&tools.strace);
        c.args(["-f", "-q", "-o"])
            .arg(&trace)
            .arg("-e")
            .arg(format!("trace={}", SYSCALLS.join(",")))
            .arg("--")
            .arg(&tools.fleetsnap_failpoints);
        c
    } else {
        Command::new(&tools.fleetsnap_failpoints)
    };
    cmd.args(&inv.args)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .env("FLEETSNAP_FAILPOINTS_TALLY", &tally);
    let f = run(cmd)?;
    if !f.status.success() {
        bail!("the undisturbed run failed: {}", f.describe());
    }
    let mut counts = Counts::default();
    if count_syscalls {
        let text = std::fs::read_to_string(&trace)
            .with_context(|| format!("reading {}", trace.display()))?;
        counts.syscalls = per_thread_max(&text);
    }
    if let Ok(text) = std::fs::read_to_string(&tally) {
        for l in text.lines().filter(|l| !l.is_empty()) {
            *counts.failpoints.entry(l.to_string()).or_insert(0) += 1;
        }
    }
    Ok((counts, f))
}

/// From `strace -f` output (`PID name(args) = ret`, the PID absent while there is one
/// thread), the highest count of each syscall in any one thread: strace's `when=N` counts
/// per syscall and per tracee.
pub fn per_thread_max(text: &str) -> BTreeMap<String, u32> {
    let mut per: BTreeMap<(u32, String), u32> = BTreeMap::new();
    for line in text.lines() {
        let (pid, rest) = match line.split_once(' ') {
            Some((p, r)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
                (p.parse().unwrap_or(0), r.trim_start())
            }
            _ => (0, line),
        };
        // "<... fsync resumed>" continues a call already counted; "+++"/"---" are events.
        let Some((name, _)) = rest.split_once('(') else {
            continue;
        };
        if SYSCALLS.contains(&name) {
            *per.entry((pid, name.to_string())).or_insert(0) += 1;
        }
    }
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    for ((_, name), n) in per {
        let m = out.entry(name).or_insert(0);
        *m = (*m).max(n);
    }
    out
}

/// A plain executor command (no kill), for setup and verification.
pub fn executor(bin: &PathBuf, inv: &Invocation) -> Command {
    let mut c = Command::new(bin);
    c.args(&inv.args).envs(inv.env.iter().map(|(k, v)| (k, v)));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_counts_are_per_thread() {
        let text = "\
fsync(3)                                = 0
renameat2(AT_FDCWD, \"a\", AT_FDCWD, \"b\", 0) = 0
101 fsync(4 <unfinished ...>
102 fsync(5)                            = 0
101 <... fsync resumed>)                = 0
102 fsync(6)                            = 0
102 +++ exited with 0 +++
101 unlinkat(AT_FDCWD, \"x\", 0)        = 0
";
        assert_eq!(
            killed_call(
                "7 unlink(\"a\" <unfinished ...>\n8 fsync(3) = 0\n7 <... unlink resumed>) = ?\n"
            ),
            Some("unlink(\"a\" <unfinished ...>".to_string())
        );
        let m = per_thread_max(text);
        assert_eq!(m["fsync"], 2);
        assert_eq!(m["renameat2"], 1);
        assert_eq!(m["unlinkat"], 1);
        assert_eq!(m.len(), 3);
    }
}

//! Kill points: where (backend, command), what (a syscall or a named failpoint) and which
//! occurrence. A point prints as `local/prune/renameat2#3` or `s3/backup/s3.put.after#2`
//! and parses back from that, which is how a failure is replayed (`--only`).

use std::collections::BTreeMap;
use std::fmt;

use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    Local,
    S3,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Local, Backend::S3];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::S3 => "s3",
        }
    }

    pub fn parse(s: &str) -> Result<Backend, String> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("unknown backend {s:?} (local, s3)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    Backup,
    Forget,
    Prune,
    Check,
    Restore,
}

impl Command {
    pub const ALL: [Command; 5] = [
        Command::Backup,
        Command::Forget,
        Command::Prune,
        Command::Check,
        Command::Restore,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Command::Backup => "backup",
            Command::Forget => "forget",
            Command::Prune => "prune",
            Command::Check => "check",
            Command::Restore => "restore",
        }
    }

    pub fn parse(s: &str) -> Result<Command, String> {
        Command::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown command {s:?} (backup, forget, prune, check, restore)"))
    }

    /// Whether the command holds an exclusive lock (restic: check, forget and prune do).
    pub fn exclusive(self) -> bool {
        matches!(self, Command::Forget | Command::Prune | Command::Check)
    }
}

/// The commit-point syscalls of the local backend: renames, links, unlinks and syncs.
pub const SYSCALLS: [&str; 9] = [
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "fsync",
    "fdatasync",
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Trigger {
    /// strace injects SIGKILL on entry to the n-th call of this syscall in one thread.
    Syscall(String),
    /// The executor's failpoint of this name kills at its n-th hit (process-wide).
    Failpoint(String),
}

impl Trigger {
    pub fn name(&self) -> &str {
        match self {
            Trigger::Syscall(s) | Trigger::Failpoint(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Point {
    pub backend: Backend,
    pub command: Command,
    pub trigger: Trigger,
    pub n: u32,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}#{}",
            self.backend.name(),
            self.command.name(),
            self.trigger.name(),
            self.n
        )
    }
}

impl std::str::FromStr for Point {
    type Err = String;

    fn from_str(s: &str) -> Result<Point, String> {
        let bad =
            || format!("{s:?}: expected backend/command/trigger#n, e.g. local/prune/renameat2#3");
        let (head, n) = s.rsplit_once('#').ok_or_else(bad)?;
        let mut parts = head.splitn(3, '/');
        let (Some(b), Some(c), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let n: u32 = n.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
        // Failpoint names have dots (`s3.put.after`), syscall names never do.
        let trigger = if t.contains('.') {
            Trigger::Failpoint(t.to_string())
        } else if SYSCALLS.contains(&t) {
            Trigger::Syscall(t.to_string())
        } else {
            return Err(format!(
                "{s:?}: {t:?} is neither a commit syscall nor a failpoint"
            ));
        };
        Ok(Point {
            backend: Backend::parse(b)?,
            command: Command::parse(c)?,
            trigger,
            n,
        })
    }
}

/// How often each trigger occurred in an undisturbed run of one command on one backend:
/// syscalls by the busiest thread (strace counts per thread), failpoints process-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub syscalls: BTreeMap<String, u32>,
    pub failpoints: BTreeMap<String, u32>,
}

/// Every point of one cell: each occurrence of each trigger that the dry run saw.
pub fn cell_points(backend: Backend, command: Command, counts: &Counts) -> Vec<Point> {
    let mut out = Vec::new();
    let triggers = counts
        .syscalls
        .iter()
        .map(|(s, n)| (Trigger::Syscall(s.clone()), *n))
        .chain(
            counts
                .failpoints
                .iter()
                .map(|(f, n)| (Trigger::Failpoint(f.clone()), *n)),
        );
    for (trigger, max) in triggers {
        for n in 1..=max {
            out.push(Point {
                backend,
                command,
                trigger: trigger.clone(),
                n,
            });
        }
    }
    out
}

/// `want` points drawn from the cells (all of them when they hold no more), spread evenly:
/// round-robin over the cells, each cell's points in seeded random order. The result is
/// sorted, so a campaign runs cell by cell.
pub fn sample(cells: &[Vec<Point>], want: usize, rng: &Rng) -> Vec<Point> {
    let mut rng = rng.fork("points");
    let mut pools: Vec<Vec<Point>> = cells.to_vec();
    for p in &mut pools {
        rng.shuffle(p);
    }
    let mut out = Vec::new();
    while out.len() < want && pools.iter().any(|p| !p.is_empty()) {
        for p in pools.iter_mut() {
            if out.len() < want
                && let Some(pt) = p.pop()
            {
                out.push(pt);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_print_and_parse_back() {
        for s in [
            "local/prune/renameat2#3",
            "s3/backup/s3.put.after#12",
            "local/prune/prune.planned#1",
        ] {
            let p: Point = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert!("local/prune/read#1".parse::<Point>().is_err());
        assert!("local/prune/fsync#0".parse::<Point>().is_err());
        assert!("ftp/prune/fsync#1".parse::<Point>().is_err());
    }

    #[test]
    fn sampling_covers_every_cell_and_is_reproducible() {
        let mut c = Counts::default();
        c.syscalls.insert("fsync".into(), 10);
        c.failpoints.insert("s3.put.after".into(), 3);
        let cells: Vec<Vec<Point>> = Command::ALL
            .iter()
            .map(|cmd| cell_points(Backend::Local, *cmd, &c))
            .collect();
        let s = sample(&cells, 12, &Rng::new(5));
        assert_eq!(s.len(), 12);
        for cmd in Command::ALL {
            assert!(s.iter().filter(|p| p.command == cmd).count() >= 2);
        }
        assert_eq!(s, sample(&cells, 12, &Rng::new(5)));
        assert_ne!(s, sample(&cells, 12, &Rng::new(6)));
        let all = sample(&cells, 10_000, &Rng::new(5));
        assert_eq!(all.len(), 5 * 13);
    }
}

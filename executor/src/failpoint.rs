//! Named kill points for the crash campaign (`tests/src/bin/robustness.rs`).
//!
//! A syscall names a commit point on the local backend (strace kills at the N-th rename or
//! fsync), but nothing names "the 7th PUT" on S3 or "prune has planned". The code calls
//! [`hit`] there instead. Without the cargo feature `failpoints` that call compiles to
//! nothing, so release and workspace builds carry no trace of it. With the feature:
//!
//! * `FLEETSNAP_FAILPOINTS="s3.put.after=7;prune.planned=1"` raises SIGKILL at the 7th hit of
//!   `s3.put.after` (counted over all threads of the process) or the 1st of `prune.planned`;
//! * `FLEETSNAP_FAILPOINTS_TALLY=/path` appends every hit's name as a line to that file, so a
//!   dry run tells the harness which counts exist.
//!
//! SIGKILL, not a panic or an exit: nothing may run after the point (no destructor removes a
//! lock, no buffered write is flushed), exactly as when the host loses the process.

/// Points before and after every S3 request that changes the repository.
pub const S3_PUT_BEFORE: &str = "s3.put.before";
pub const S3_PUT_AFTER: &str = "s3.put.after";
pub const S3_DELETE_BEFORE: &str = "s3.delete.before";
pub const S3_DELETE_AFTER: &str = "s3.delete.after";
/// Prune phases: the plan is made, nothing changed yet.
pub const PRUNE_PLANNED: &str = "prune.planned";
/// Before each source pack of a repack is read and its blobs re-saved.
pub const PRUNE_REPACK: &str = "prune.repack";
/// The repacked packs are stored, the new index is not written yet.
pub const PRUNE_REPACKED: &str = "prune.repacked";
/// The new index is written, no old index file or pack is deleted yet.
pub const PRUNE_INDEXED: &str = "prune.indexed";

/// Every point the executor has, for the harness's `--list` and for tests.
pub const ALL: [&str; 8] = [
    S3_PUT_BEFORE,
    S3_PUT_AFTER,
    S3_DELETE_BEFORE,
    S3_DELETE_AFTER,
    PRUNE_PLANNED,
    PRUNE_REPACK,
    PRUNE_REPACKED,
    PRUNE_INDEXED,
];

/// Reached point `name`: with the feature on and `name=N` configured, the N-th hit kills the
/// process.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

/// [`hit`] `name` if the request before it succeeded: the "after" half of a pair.
#[inline(always)]
pub fn hit_if_ok<T, E>(name: &'static str, r: &Result<T, E>) {
    if r.is_ok() {
        hit(name);
    }
}

/// True when this build has working failpoints (the feature is on).
pub const ENABLED: bool = cfg!(feature = "failpoints");

#[cfg(feature = "failpoints")]
pub fn hit(name: &'static str) {
    active::hit(name)
}

#[cfg(feature = "failpoints")]
mod active {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    struct Config {
        /// Point → the hit that kills.
        kill_at: HashMap<String, u64>,
        tally: Option<Mutex<std::fs::File>>,
        hits: Mutex<HashMap<&'static str, u64>>,
    }

    fn config() -> &'static Config {
        static CONFIG: OnceLock<Config> = OnceLock::new();
        CONFIG.get_or_init(|| {
            let spec = std::env::var("FLEETSNAP_FAILPOINTS").unwrap_or_default();
            let kill_at = super::parse(&spec).unwrap_or_else(|e| {
                // A typo must not turn a kill campaign into a run that silently passes.
                eprintln!("fleetsnap: FLEETSNAP_FAILPOINTS: {e}");
                std::process::exit(2)
            });
            let tally = std::env::var_os("FLEETSNAP_FAILPOINTS_TALLY").map(|p| {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .unwrap_or_else(|e| {
                        eprintln!("fleetsnap: FLEETSNAP_FAILPOINTS_TALLY {p:?}: {e}");
                        std::process::exit(2)
                    });
                Mutex::new(f)
            });
            Config {
                kill_at,
                tally,
                hits: Mutex::new(HashMap::new()),
            }
        })
    }

    pub fn hit(name: &'static str) {
        let c = config();
        if c.kill_at.is_empty() && c.tally.is_none() {
            return;
        }
        // Counting and killing under one lock: two threads cannot both be "the 7th".
        let mut hits = c.hits.lock().unwrap_or_else(|p| p.into_inner());
        let n = hits.entry(name).or_insert(0);
        *n += 1;
        if let Some(t) = &c.tally {
            let mut f = t.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{name}");
        }
        if c.kill_at.get(name) == Some(n) {
            // SAFETY: raising a signal in our own process; SIGKILL cannot be caught.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // SIGKILL is delivered before kill() returns to a process signalling itself;
            // never continue past the point even if it were not.
            loop {
                std::thread::park();
            }
        }
    }
}

/// `name=N[;name=N...]` (`,` works too) → point → hit number (from 1).
pub fn parse(spec: &str) -> Result<std::collections::HashMap<String, u64>, String> {
    let mut out = std::collections::HashMap::new();
    for item in spec
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, n) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected name=N"))?;
        if !ALL.contains(&name) {
            return Err(format!(
                "{name:?}: no such failpoint (known: {})",
                ALL.join(", ")
            ));
        }
        let n: u64 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{item:?}: N must be a number from 1"))?;
        out.insert(name.to_string(), n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_typos_are_refused() {
        let m = parse("s3.put.after=7; prune.planned=1,").unwrap();
        assert_eq!(m["s3.put.after"], 7);
        assert_eq!(m["prune.planned"], 1);
        assert!(parse("").unwrap().is_empty());
        assert!(
            parse("s3.put.aftr=7")
                .unwrap_err()
                .contains("no such failpoint")
        );
        assert!(parse("s3.put.after=0").is_err());
        assert!(parse("s3.put.after").is_err());
    }
}

//! Limits on everything the operator reads from hosts, and on the host-provided text it
//! copies into Kubernetes objects.
//!
//! A host is only as trustworthy as its root account: a compromised host can print anything
//! in answer to any command and write any run record. Whatever it sends is read up to a cap
//! per command ([`MAX_STDOUT`] unless the caller asks for another), every run record up to
//! [`MAX_RUN_RECORD`], and text that reaches status, conditions or Events is cut to
//! [`MAX_ERROR_TEXT`] per host and [`MAX_CONDITION_MESSAGE`] per condition, so one host can
//! neither exhaust the operator's memory nor make a status write fail (the API server
//! refuses objects over 1.5 MiB, which would stall status for every other host of the
//! policy too). `docs/host-layout.md` states the limits as part of the host contract.

/// stdout kept from one command, unless the caller sets its own limit: the fact-gathering
/// script prints a few KiB (one short line per managed file, unit and directory),
/// `systemctl show` of a few timers less. A command printing more fails with
/// `HostError::OutputTooLarge` and its connection is dropped.
pub const MAX_STDOUT: usize = 1 << 20;

/// stderr kept from one command: only its tail is ever shown (see `error::stderr_tail`), so
/// older bytes are dropped as more arrive; never an error.
pub const MAX_STDERR: usize = 16 << 10;

/// One run record. The executor writes about 400 bytes plus its error text, which it caps
/// at 8 KiB (`fleetsnap_contract::record::MAX_ERROR`); 64 KiB leaves room for JSON escaping. The host
/// side of the read (`head -c`) stops at one byte more, so an oversized record is reported
/// by name without being transferred whole.
pub const MAX_RUN_RECORD: usize = 64 << 10;

/// Longest run record file name read (NAME_MAX on Linux).
pub const MAX_RECORD_NAME: usize = 255;

/// The whole answer of the run-record read for `n` records: each record at its cap plus
/// one byte, its name and two separators.
pub const fn run_records_output(n: usize) -> usize {
    n * (MAX_RUN_RECORD + 1 + MAX_RECORD_NAME + 2) + 4096
}

/// Journal lines read for a failed verify run: `tail -n 50` on the host, each line cut to
/// [`MAX_LOG_LINE`]; the command's whole output is capped at what 50 such lines take.
pub const FAILURE_LOG_LINES: usize = 50;
pub const MAX_LOG_LINE: usize = 512;
pub const MAX_FAILURE_LOG: usize = FAILURE_LOG_LINES * (MAX_LOG_LINE + 1) + 4096;

/// Damaged pack IDs a VerifyPolicy lists per host (from the journal lines above).
pub const MAX_PACKS_LISTED: usize = 20;

/// Restore prints progress and then a summary as its last line; only that line matters, so
/// the operator keeps the last 64 KiB of its stdout (never an error: a large restore may
/// legitimately print a lot).
pub const RESTORE_STDOUT_TAIL: usize = 64 << 10;

/// Host-provided text (a run record's error, a failure's message) in one host's status
/// entry, summary message, or `errors[]` entry.
pub const MAX_ERROR_TEXT: usize = 1024;

/// Any condition message, e.g. a policy's `Ready` listing its failing hosts: enough for a
/// handful of hosts with their errors, the rest summed up as "and N more". Enforced for
/// every condition by `Condition::new`.
pub use fleetsnap_crds::common::MAX_CONDITION_MESSAGE;

/// One fact value (`uname -r`, the `systemctl --version` line) copied into `Host.status`.
pub const MAX_FACT_VALUE: usize = 256;

/// The marker that ends text cut by [`bounded`].
pub const ELLIPSIS: &str = "…";

/// `s` cut to at most `max` bytes plus [`ELLIPSIS`], on a UTF-8 character boundary; `s`
/// itself when it fits.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &s[..end])
}

/// Joins `items` with `sep` into at most `max` bytes: whole items while they fit (the
/// first one cut if even it does not), then `; and N more`.
pub fn join_bounded<I: IntoIterator<Item = String>>(items: I, sep: &str, max: usize) -> String {
    let items: Vec<String> = items.into_iter().collect();
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let rest = items.len() - i;
        // Room for this item and, if more follow, the "and N more" tail.
        let tail = if rest > 1 {
            format!("{sep}and {} more", rest - 1).len()
        } else {
            0
        };
        let add = if i == 0 { 0 } else { sep.len() } + item.len();
        if out.len() + add + tail <= max {
            if i > 0 {
                out.push_str(sep);
            }
            out.push_str(item);
            continue;
        }
        if i == 0 {
            let room = max.saturating_sub(tail + ELLIPSIS.len());
            out = bounded(item, room);
            if rest > 1 {
                out.push_str(&format!("{sep}and {} more", rest - 1));
            }
            return out;
        }
        out.push_str(&format!("{sep}and {rest} more"));
        return out;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_char_boundary_with_a_marker() {
        assert_eq!(bounded("short", 10), "short");
        let s = "é".repeat(600); // 1200 bytes
        let b = bounded(&s, MAX_ERROR_TEXT);
        assert!(b.len() <= MAX_ERROR_TEXT + ELLIPSIS.len());
        assert!(b.ends_with(ELLIPSIS));
        assert_eq!(bounded("aé", 2), format!("a{ELLIPSIS}"));
    }

    #[test]
    fn join_keeps_whole_items_then_counts_the_rest() {
        let items = (0..100).map(|i| format!("host{i:02} (failed)"));
        let j = join_bounded(items, "; ", 80);
        assert!(j.len() <= 80, "{} bytes: {j}", j.len());
        assert!(j.starts_with("host00 (failed); host01"));
        assert!(j.ends_with("more"), "{j}");
        let n: usize = j
            .rsplit("and ")
            .next()
            .unwrap()
            .trim_end_matches(" more")
            .parse()
            .unwrap();
        assert_eq!(n + j.matches("(failed)").count(), 100);
        assert_eq!(
            join_bounded(["a".to_string(), "b".into()], "; ", 80),
            "a; b"
        );
        let one = join_bounded(["x".repeat(500), "y".into()], "; ", 100);
        assert!(one.len() <= 100 && one.contains("and 1 more"), "{one}");
        assert_eq!(join_bounded(Vec::new(), "; ", 10), "");
    }
}

//! Observation for status: the newest run records of a job and the state of its timer.

use chrono::{DateTime, Utc};
use tracing::{Instrument, info_span, warn};

use super::error::HostError;
use super::layout::JobId;
use super::shell::{HostShell, StdoutLimit, run_ok, run_script_limited};
use crate::limits::{MAX_FACT_VALUE, MAX_RECORD_NAME, MAX_RUN_RECORD, bounded, run_records_output};
use fleetsnap_contract::RunRecord;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimerState {
    pub unit: String,
    /// `ActiveState` (`active`, `inactive`, `failed`, ...).
    pub active_state: String,
    /// `UnitFileState` (`enabled`, `disabled`, ...).
    pub unit_file_state: String,
    /// Unix seconds of the last trigger, if it ever fired.
    pub last_trigger: Option<i64>,
    /// Unix seconds of the next scheduled elapse (wall clock), if scheduled.
    pub next_elapse: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobObservation {
    /// Oldest first. Times are the host's, as the executor wrote them.
    pub records: Vec<RunRecord>,
    /// Records that exist but could not be parsed: (file name, reason).
    pub unreadable: Vec<(String, String)>,
    pub timer: Option<TimerState>,
    /// How far the host's clock is ahead of the operator's (negative: behind), in seconds,
    /// measured during this observation; 0 within [`CLOCK_TOLERANCE_SECS`] or when the
    /// host's clock could not be read. See [`JobObservation::local`].
    pub clock_offset_secs: i64,
}

/// Offsets up to this are reported as 0: the host prints whole seconds and the SSH round
/// trip blurs the reading, and no decision the operator makes needs finer time.
pub const CLOCK_TOLERANCE_SECS: i64 = 5;

/// The host's clock offset from one reading: the operator's clock (Unix ms) before and
/// after the command, and the host's answer (Unix seconds). The host read its clock
/// somewhere in between, so the midpoint is compared; a reading that took longer than the
/// tolerance says too little and counts as "no offset".
pub fn clock_offset(before_ms: i64, host_secs: i64, after_ms: i64) -> i64 {
    if after_ms < before_ms || after_ms - before_ms > CLOCK_TOLERANCE_SECS * 1000 {
        return 0;
    }
    let mid_ms = before_ms + (after_ms - before_ms) / 2;
    // The host truncates to whole seconds: its instant lies in [host, host + 1).
    let offset_ms = host_secs * 1000 + 500 - mid_ms;
    let offset = offset_ms.div_euclid(1000);
    if offset.abs() <= CLOCK_TOLERANCE_SECS {
        0
    } else {
        offset
    }
}

impl JobObservation {
    /// A host-written time (run record, timer) on the operator's clock. Every decision
    /// that compares a host time with the operator's `now` (staleness, when to look
    /// again, rotation windows) goes through this, so a host clock hours off does not
    /// make a fresh backup look stale or a stopped one look fresh.
    pub fn local(&self, host_time: DateTime<Utc>) -> DateTime<Utc> {
        host_time - chrono::Duration::seconds(self.clock_offset_secs)
    }

    /// [`JobObservation::local`] for Unix seconds.
    pub fn local_secs(&self, host_secs: i64) -> i64 {
        host_secs.saturating_sub(self.clock_offset_secs)
    }

    pub fn last_run(&self) -> Option<&RunRecord> {
        self.records.last()
    }

    pub fn last_success(&self) -> Option<&RunRecord> {
        self.records.iter().rev().find(|r| r.succeeded())
    }

    /// The unreadable record (name, why) that is newer than every readable one, if any:
    /// the newest run cannot be judged, which status reports instead of an older run.
    /// Names sort by start time, as the host lists them.
    pub fn newest_unreadable(&self) -> Option<&(String, String)> {
        let newest = self.unreadable.iter().max_by(|a, b| a.0.cmp(&b.0))?;
        match self.last_run() {
            Some(r) if r.file_name() >= newest.0 => None,
            _ => Some(newest),
        }
    }
}

/// Prints the newest `$2` complete records of directory `$1`, each as name NUL content NUL.
/// Names sort by start time (see `RunRecord::file_name`); in-progress `.json.tmp` files are
/// skipped. Each record is cut at `$3` bytes (one more than the operator's cap, so an
/// oversized record shows as such without being sent whole), and NUL bytes, which no JSON
/// contains, are dropped so that a record cannot break the framing.
const READ_RECORDS: &str = r#"set -eu
[ -d "$1" ] || exit 0
cd -- "$1"
ls -1 | grep '\.json$' | sort | tail -n "$2" | while IFS= read -r f; do
  printf '%s\0' "$f"; head -c "$3" -- "$f" | tr -d '\000'; printf '\0'
done
"#;

pub async fn observe_job<S: HostShell>(
    sh: &S,
    job: &JobId,
    max_records: usize,
) -> Result<JobObservation, HostError> {
    let span = info_span!("observe", host = %sh.host_name(), job = %job.slug());
    async {
        let n = max_records.max(1);
        let per_record = (MAX_RUN_RECORD + 1).to_string();
        // Operator side: the whole answer is capped too, whatever the host's `head` does.
        let out = run_script_limited(
            sh,
            "read run records",
            READ_RECORDS,
            &[&job.runs_dir(), &n.to_string(), &per_record],
            b"",
            StdoutLimit::Fail(run_records_output(n)),
        )
        .await?;
        let mut obs = parse_records(&out.stdout);
        obs.timer = timer_states(sh, &[job.timer_unit()]).await?.pop();
        obs.clock_offset_secs = host_clock_offset(sh).await;
        if obs.clock_offset_secs != 0 {
            warn!(
                host = %sh.host_name(),
                offset_seconds = obs.clock_offset_secs,
                "host clock differs from the operator's; host-written times are corrected for decisions"
            );
        }
        Ok(obs)
    }
    .instrument(span)
    .await
}

/// The host's clock offset (see [`clock_offset`]); 0 when it cannot be read, since a
/// missing reading must not fail the observation.
async fn host_clock_offset<S: HostShell>(sh: &S) -> i64 {
    let before = Utc::now().timestamp_millis();
    let out = run_ok(sh, "read the host clock", &["date", "-u", "+%s"], b"").await;
    let after = Utc::now().timestamp_millis();
    match out
        .ok()
        .and_then(|o| o.stdout_text().trim().parse::<i64>().ok())
    {
        Some(host) => clock_offset(before, host, after),
        None => 0,
    }
}

/// Parses [`READ_RECORDS`] output. A record over [`MAX_RUN_RECORD`] bytes, or one that is
/// not a run record, is listed in `unreadable` with the reason, never parsed.
pub fn parse_records(raw: &[u8]) -> JobObservation {
    let mut obs = JobObservation::default();
    let mut parts = raw.split(|b| *b == 0);
    while let (Some(name), Some(body)) = (parts.next(), parts.next()) {
        let name = bounded(&String::from_utf8_lossy(name), MAX_RECORD_NAME);
        if name.is_empty() {
            continue;
        }
        if body.len() > MAX_RUN_RECORD {
            obs.unreadable.push((
                name,
                format!(
                    "the run record is larger than the {} KiB limit (the executor never \
                     writes one this large; check the host)",
                    MAX_RUN_RECORD >> 10
                ),
            ));
            continue;
        }
        match serde_json::from_slice::<RunRecord>(body) {
            Ok(r) => obs.records.push(r),
            Err(e) => obs.unreadable.push((name, bounded(&e.to_string(), 200))),
        }
    }
    obs
}

/// `systemctl show` for the given timers (glob patterns such as `fleetsnap-*.timer` match
/// loaded units).
pub async fn timer_states<S: HostShell>(
    sh: &S,
    units: &[String],
) -> Result<Vec<TimerState>, HostError> {
    // `show` prints local time in the host's zone (and ignores --timestamp= on systemd 252);
    // forcing UTC makes the output parseable everywhere.
    let mut argv = vec!["env", "TZ=UTC", "LC_ALL=C", "systemctl", "show"];
    for p in [
        "Id",
        "ActiveState",
        "UnitFileState",
        "LastTriggerUSec",
        "NextElapseUSecRealtime",
    ] {
        argv.extend(["-p", p]);
    }
    argv.extend(units.iter().map(String::as_str));
    let out = run_ok(sh, "systemctl show timers", &argv, b"").await?;
    Ok(parse_show(&out.stdout_text()))
}

pub fn parse_show(text: &str) -> Vec<TimerState> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut t = TimerState::default();
            for line in block.lines() {
                let Some((k, v)) = line.split_once('=') else {
                    continue;
                };
                let v = bounded(v, MAX_FACT_VALUE);
                let v = v.as_str();
                match k {
                    "Id" => t.unit = v.to_string(),
                    "ActiveState" => t.active_state = v.to_string(),
                    "UnitFileState" => t.unit_file_state = v.to_string(),
                    "LastTriggerUSec" => t.last_trigger = parse_unix(v),
                    "NextElapseUSecRealtime" => t.next_elapse = parse_unix(v),
                    _ => {}
                }
            }
            t
        })
        .collect()
}

/// `Mon 2026-11-23 03:00:59 UTC` (with TZ=UTC) or `@1700000000` → unix seconds.
fn parse_unix(v: &str) -> Option<i64> {
    if let Some(secs) = v.strip_prefix('@') {
        return secs.parse().ok().filter(|s| *s > 0);
    }
    let rest = v.split_once(' ')?.1.strip_suffix(" UTC")?;
    chrono::NaiveDateTime::parse_from_str(rest, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offset_reads_whole_seconds_around_the_midpoint() {
        let t = 1_000_000_000; // operator ms
        // In sync (the host truncates 1_000_000.3 s to 1_000_000): no offset.
        assert_eq!(clock_offset(t + 200, 1_000_000, t + 400), 0);
        // 3 h ahead / behind.
        assert_eq!(clock_offset(t, 1_000_000 + 10_800, t + 100), 10_800);
        assert_eq!(clock_offset(t, 1_000_000 - 10_800, t + 100), -10_800);
        // Within the tolerance: reported as none.
        assert_eq!(clock_offset(t, 1_000_000 + 5, t + 100), 0);
        assert_eq!(clock_offset(t, 1_000_000 + 6, t + 100), 6);
        // A reading that took 30 s proves nothing.
        assert_eq!(clock_offset(t, 1_000_000 + 10_800, t + 30_000), 0);
    }

    #[test]
    fn local_shifts_host_times_onto_the_operators_clock() {
        let obs = JobObservation {
            clock_offset_secs: 3600,
            ..JobObservation::default()
        };
        let host: DateTime<Utc> = "2026-03-01T06:00:00Z".parse().unwrap();
        assert_eq!(obs.local(host).to_rfc3339(), "2026-03-01T05:00:00+00:00");
        assert_eq!(obs.local_secs(7200), 3600);
    }

    #[test]
    fn parses_show_blocks() {
        let text = "Id=fleetsnap-backup-a.timer\nActiveState=active\nUnitFileState=enabled\n\
                    LastTriggerUSec=@1740794400\nNextElapseUSecRealtime=Mon 2025-03-03 02:00:00 UTC\n\n\
                    Id=fleetsnap-verify-a.timer\nActiveState=inactive\nUnitFileState=disabled\n\
                    LastTriggerUSec=n/a\nNextElapseUSecRealtime=\n";
        let t = parse_show(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].last_trigger, Some(1740794400));
        assert_eq!(t[0].next_elapse, Some(1740967200));
        assert_eq!(t[1].last_trigger, None);
        assert_eq!(t[1].unit_file_state, "disabled");
    }

    #[test]
    fn parses_records_and_reports_bad_ones() {
        let good = br#"{"policy":"a","kind":"backup","started":"2025-03-01T02:00:03Z","finished":"2025-03-01T02:00:05Z","exit_code":0,"snapshot_id":"ab","files_new":1,"files_changed":0,"files_unmodified":0,"bytes_added":10,"duration_seconds":2.0,"error":null}"#;
        let failed = br#"{"policy":"a","kind":"backup","started":"2025-03-02T02:00:03Z","finished":"2025-03-02T02:00:04Z","exit_code":3,"duration_seconds":1.0,"error":"repository unreachable"}"#;
        let mut raw = Vec::new();
        for (n, b) in [
            (&b"20250301T020003Z.json"[..], &good[..]),
            (b"20250302T020003Z.json", &failed[..]),
            (b"broken.json", b"{"),
        ] {
            raw.extend_from_slice(n);
            raw.push(0);
            raw.extend_from_slice(b);
            raw.push(0);
        }
        let obs = parse_records(&raw);
        assert_eq!(obs.records.len(), 2);
        assert_eq!(obs.unreadable.len(), 1);
        assert_eq!(obs.last_run().unwrap().exit_code, 3);
        assert_eq!(
            obs.last_success().unwrap().snapshot_id.as_deref(),
            Some("ab")
        );
        assert!(parse_records(b"").records.is_empty());
    }

    /// A record bigger than a run record can be (here 4 MiB of error text) is reported by
    /// name as unreadable, not parsed, and the records around it still count.
    #[test]
    fn oversized_run_record_is_reported_not_parsed() {
        let good = br#"{"policy":"a","kind":"backup","started":"2025-03-01T02:00:03Z","finished":"2025-03-01T02:00:05Z","exit_code":0,"snapshot_id":"ab","duration_seconds":2.0,"error":null}"#;
        let huge = format!(
            r#"{{"policy":"a","kind":"backup","started":"2025-03-02T02:00:03Z","finished":"2025-03-02T02:00:04Z","exit_code":3,"duration_seconds":1.0,"error":"{}"}}"#,
            "x".repeat(4 << 20)
        );
        let mut raw = Vec::new();
        for (n, b) in [
            (&b"20250301T020003Z.json"[..], &good[..]),
            (b"20250302T020003Z.json", huge.as_bytes()),
        ] {
            raw.extend_from_slice(n);
            raw.push(0);
            raw.extend_from_slice(b);
            raw.push(0);
        }
        let obs = parse_records(&raw);
        assert_eq!(obs.records.len(), 1, "the oversized record is not parsed");
        assert_eq!(obs.unreadable.len(), 1);
        let (name, why) = &obs.unreadable[0];
        assert_eq!(name, "20250302T020003Z.json");
        assert!(why.contains("larger than"), "{why}");
        assert_eq!(
            obs.newest_unreadable().map(|u| u.0.as_str()),
            Some(name.as_str())
        );
        // Cut by the host's `head -c` at the cap plus one, it is still refused.
        let mut cut = b"20250303T020003Z.json\0".to_vec();
        cut.extend_from_slice(&huge.as_bytes()[..MAX_RUN_RECORD + 1]);
        cut.push(0);
        let obs = parse_records(&cut);
        assert!(obs.records.is_empty());
        assert!(
            obs.unreadable[0].1.contains("64 KiB"),
            "{:?}",
            obs.unreadable
        );
    }
}

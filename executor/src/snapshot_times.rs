//! Which snapshot times a trusted party may believe.
//!
//! A snapshot's `time` is written by the host that made it. restic documents the attack on
//! append-only repositories that follows: a compromised client adds snapshots dated in the
//! future, or slightly newer than each real one, and a trusted `forget --keep-daily …` then
//! keeps the forgeries and deletes the real history. The storage records its own time for
//! each file (S3 `LastModified`, set by the server's clock). A snapshot whose claimed time
//! disagrees with that write time by more than a backup can take, or that lies in the future
//! of the party judging it, is *suspicious*: trusted retention neither counts it towards a
//! keep rule nor deletes it, and reports it.
//!
//! The rule, with `skew` the tolerated clock difference and `max_backup` the longest a backup
//! may run (its snapshot's time is when it started, the file is written when it ends):
//!
//! ```text
//! written − max_backup ≤ claimed ≤ min(written, now) + skew
//! ```
//!
//! A forgery written at time `t` can then only claim a time in `[t − max_backup, t + skew]`,
//! so it competes only with real snapshots of that last stretch: everything older is out of
//! its reach. Where the storage does not say when it wrote a file (REST), only the `now`
//! bound applies.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, Duration, Utc};

use crate::format::snapshot::Snapshot;
use crate::id::Id;

/// How far claimed and recorded times may disagree before a snapshot is suspicious.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    /// Difference allowed between the host's clock and the storage's or the judge's.
    pub clock_skew: Duration,
    /// Longest a backup may run: how much earlier than its write time a snapshot may claim
    /// to have started.
    pub max_backup: Duration,
}

impl Default for Tolerance {
    /// 15 minutes of skew (hosts run NTP; this is generous), a day-long backup.
    fn default() -> Tolerance {
        Tolerance {
            clock_skew: Duration::minutes(15),
            max_backup: Duration::hours(24),
        }
    }
}

/// Why a snapshot's time cannot be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspicion {
    /// It claims a time after the judge's own clock (beyond the skew).
    InTheFuture { ahead: Duration },
    /// It claims to have started after the storage wrote it.
    AfterItsWrite { by: Duration },
    /// It claims to have started longer before its write than any backup runs: written now,
    /// dated into the past.
    LongBeforeItsWrite { by: Duration },
}

impl fmt::Display for Suspicion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Suspicion::InTheFuture { ahead } => write!(f, "dated {} in the future", human(*ahead)),
            Suspicion::AfterItsWrite { by } => {
                write!(f, "dated {} after the storage wrote it", human(*by))
            }
            Suspicion::LongBeforeItsWrite { by } => write!(
                f,
                "written {} after the time it claims, longer than any backup runs",
                human(*by)
            ),
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s >= 2 * 86_400 => format!("{}d", s / 86_400),
        s if s >= 2 * 3600 => format!("{}h", s / 3600),
        s if s >= 120 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The verdict on one claimed time. `written`: the storage's write time, if it told.
pub fn judge(
    claimed: DateTime<Utc>,
    written: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    tol: &Tolerance,
) -> Option<Suspicion> {
    if claimed > now + tol.clock_skew {
        return Some(Suspicion::InTheFuture {
            ahead: claimed - now,
        });
    }
    let written = written?;
    if claimed > written + tol.clock_skew {
        return Some(Suspicion::AfterItsWrite {
            by: claimed - written,
        });
    }
    if claimed < written - tol.max_backup {
        return Some(Suspicion::LongBeforeItsWrite {
            by: written - claimed,
        });
    }
    None
}

/// One snapshot retention will not touch, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    pub id: Id,
    /// The time the snapshot claims (RFC 3339, as written).
    pub claimed: String,
    /// When the storage wrote it (RFC 3339, UTC), where known.
    pub written: Option<String>,
    pub why: Suspicion,
}

impl fmt::Display for Suspect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot {} claims {}", self.id.short(), self.claimed)?;
        if let Some(w) = &self.written {
            write!(f, " (written {w})")?;
        }
        write!(f, ": {}", self.why)
    }
}

/// Snapshots split into those whose times can be believed and the suspects.
#[derive(Debug, Default)]
pub struct Vetted {
    pub trusted: Vec<(Id, Snapshot)>,
    /// The storage's write time of each trusted snapshot, where known.
    pub written: HashMap<Id, SystemTime>,
    pub suspects: Vec<Suspect>,
}

/// Splits `snaps` (each with the storage's write time, if known) by [`judge`].
pub fn vet(
    snaps: Vec<(Id, Snapshot, Option<SystemTime>)>,
    now: DateTime<Utc>,
    tol: &Tolerance,
) -> Vetted {
    let mut out = Vetted::default();
    for (id, s, written) in snaps {
        let claimed = s.time.0.with_timezone(&Utc);
        let at = written;
        let written = written.map(DateTime::<Utc>::from);
        match judge(claimed, written, now, tol) {
            None => {
                if let Some(at) = at {
                    out.written.insert(id, at);
                }
                out.trusted.push((id, s));
            }
            Some(why) => out.suspects.push(Suspect {
                id,
                claimed: s.time.to_string(),
                written: written.map(|w| w.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                why,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_window_around_the_write_time() {
        let tol = Tolerance::default();
        let now = t("2026-12-01T12:00:00Z");
        let w = Some(t("2026-11-20T03:00:00Z"));
        let cases = [
            // An ordinary backup: started a few minutes before it was written.
            ("2026-11-20T02:55:00Z", w, None),
            // A day-long backup still fits; a day and a minute does not.
            ("2026-11-19T03:00:00Z", w, None),
            (
                "2026-11-19T02:59:00Z",
                w,
                Some(Suspicion::LongBeforeItsWrite {
                    by: Duration::minutes(24 * 60 + 1),
                }),
            ),
            // A host clock 10 minutes fast is tolerated, 20 minutes is not.
            ("2026-11-20T03:10:00Z", w, None),
            (
                "2026-11-20T03:20:00Z",
                w,
                Some(Suspicion::AfterItsWrite {
                    by: Duration::minutes(20),
                }),
            ),
            // Future-dated, whatever the storage says.
            (
                "2099-01-01T00:00:00Z",
                None,
                Some(Suspicion::InTheFuture {
                    ahead: t("2099-01-01T00:00:00Z") - now,
                }),
            ),
            // Without a write time only the future bound applies.
            ("2020-01-01T00:00:00Z", None, None),
        ];
        for (claimed, written, want) in cases {
            assert_eq!(
                judge(t(claimed), written, now, &tol),
                want,
                "claimed {claimed}, written {written:?}"
            );
        }
    }

    #[test]
    fn a_forgery_written_now_reaches_back_one_backup_at_most() {
        // Whatever it claims, a snapshot written at `now` is believed only inside
        // [now - max_backup, now + skew].
        let tol = Tolerance::default();
        let now = t("2026-12-01T12:00:00Z");
        for hours_back in 0..(24 * 90) {
            let claimed = now - Duration::hours(hours_back);
            let believed = judge(claimed, Some(now), now, &tol).is_none();
            assert_eq!(believed, hours_back <= 24, "{hours_back}h back");
        }
    }

    #[test]
    fn suspects_say_what_they_claim_and_when_they_were_written() {
        let s = Suspect {
            id: Id([7; 32]),
            claimed: "2099-01-01T00:00:00Z".into(),
            written: Some("2026-12-01T12:00:00Z".into()),
            why: Suspicion::InTheFuture {
                ahead: Duration::days(26_600),
            },
        };
        let text = s.to_string();
        assert!(
            text.contains("07070707")
                && text.contains("2099-01-01")
                && text.contains("written 2026-12-01")
                && text.contains("26600d in the future"),
            "{text}"
        );
    }
}

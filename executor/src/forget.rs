//! `forget` decisions: a pure function from snapshots + policy to keep/remove with reasons.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use chrono::{DateTime, Datelike, FixedOffset, Timelike};

use crate::format::snapshot::Snapshot;
use crate::id::Id;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Keep everything newer than (latest snapshot time − within).
    pub within: Option<chrono::Duration>,
    pub tags: Vec<String>,
    /// Count `within` back from this time when it is earlier than the newest snapshot:
    /// trusted retention passes its own clock, so that one future-dated snapshot cannot
    /// move the window past every real one. `None`: from the newest snapshot, as restic.
    pub within_anchor: Option<chrono::DateTime<chrono::Utc>>,
}

impl Policy {
    /// No keep rule at all (the anchor is not a rule).
    pub fn is_empty(&self) -> bool {
        Policy {
            within_anchor: None,
            ..self.clone()
        } == Policy::default()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub id: String,
    pub time: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Parse restic durations like `1y2m3d4h` (y=365d, m=30d as restic's approximations).
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let mut total = chrono::Duration::zero();
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        num.clear();
        total += match c {
            'y' => chrono::Duration::days(365 * n),
            'm' => chrono::Duration::days(30 * n),
            'd' => chrono::Duration::days(n),
            'h' => chrono::Duration::hours(n),
            _ => return Err(format!("invalid duration unit {c:?} in {s:?}")),
        };
    }
    if !num.is_empty() {
        return Err(format!("duration {s:?} lacks a unit (y, m, d, h)"));
    }
    Ok(total)
}

type BucketFn = fn(&DateTime<FixedOffset>) -> i64;

/// Decide for one group, as restic does: each calendar rule keeps the newest snapshot of
/// each of its newest buckets. Input order does not matter; output is newest first.
pub fn apply(snaps: &[(Id, Snapshot)], p: &Policy) -> Vec<Decision> {
    decide(snaps, p, None)
}

/// Like [`apply`], but a snapshot the storage wrote *out of order* (after a snapshot that
/// claims a later time) never takes a calendar bucket from one written in order. `written`:
/// the storage's write time per snapshot; without one a snapshot counts as in order. One
/// writer backing up one set of paths writes in order, so on an honest history this is
/// exactly [`apply`]; a snapshot added later but dated into the past, forged or not, cannot
/// make a rule drop the history it was slipped into. For trusted retention over snapshots
/// whose times were vetted (`snapshot_times`); `keep-last` still counts the newest
/// snapshots, whoever wrote them.
pub fn apply_in_write_order(
    snaps: &[(Id, Snapshot)],
    written: &HashMap<Id, SystemTime>,
    p: &Policy,
) -> Vec<Decision> {
    decide(snaps, p, Some(written))
}

fn decide(
    snaps: &[(Id, Snapshot)],
    p: &Policy,
    written: Option<&HashMap<Id, SystemTime>>,
) -> Vec<Decision> {
    let mut sorted: Vec<&(Id, Snapshot)> = snaps.iter().collect();
    sorted.sort_by(|a, b| {
        b.1.time
            .unix_nanos()
            .cmp(&a.1.time.unix_nanos())
            .then(b.0.cmp(&a.0))
    });
    let rules: [(&str, u32, BucketFn); 6] = [
        ("last snapshot", p.last, |_| 0),
        ("hourly snapshot", p.hourly, |t| {
            (t.year() as i64 * 1_000_000) + (t.ordinal() as i64 * 100) + t.hour() as i64
        }),
        ("daily snapshot", p.daily, |t| {
            t.year() as i64 * 1000 + t.ordinal() as i64
        }),
        ("weekly snapshot", p.weekly, |t| {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly snapshot", p.monthly, |t| {
            t.year() as i64 * 100 + t.month() as i64
        }),
        ("yearly snapshot", p.yearly, |t| t.year() as i64),
    ];
    // In order: written no later than every snapshot that claims a later time (walking
    // newest-first, the earliest write seen so far bounds the ones still to come).
    let in_order: Vec<bool> = {
        let mut earliest_later: Option<SystemTime> = None;
        sorted
            .iter()
            .map(|(id, _)| {
                let at = written.and_then(|w| w.get(id)).copied();
                let ok = match (at, earliest_later) {
                    (Some(a), Some(l)) => a <= l,
                    _ => true,
                };
                if let Some(a) = at {
                    earliest_later = Some(earliest_later.map_or(a, |l| l.min(a)));
                }
                ok
            })
            .collect()
    };
    // Which member keeps each bucket of each rule: the newest, as restic, except that a
    // member written in order beats one written out of order. keep-last has no buckets.
    let keeper: Vec<HashMap<i64, usize>> = rules
        .iter()
        .enumerate()
        .map(|(i, (_, _, bucket))| {
            let mut m: HashMap<i64, usize> = HashMap::new();
            if i == 0 {
                return m;
            }
            for (idx, (_, s)) in sorted.iter().enumerate() {
                let b = bucket(&s.time.0);
                match m.get(&b) {
                    None => {
                        m.insert(b, idx);
                    }
                    Some(&cur) if !in_order[cur] && in_order[idx] => {
                        m.insert(b, idx);
                    }
                    Some(_) => {}
                }
            }
            m
        })
        .collect();
    let mut remaining: Vec<u32> = rules.iter().map(|r| r.1).collect();
    let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
    let anchor = p
        .within_anchor
        .map(|a| a.timestamp() as i128 * 1_000_000_000 + a.timestamp_subsec_nanos() as i128);
    let newest = sorted
        .first()
        .map(|s| s.1.time.unix_nanos())
        .map(|n| anchor.map_or(n, |a| n.min(a)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];
    for (idx, (_, s)) in sorted.iter().enumerate() {
        let t = s.time.0;
        let oldest = idx + 1 == sorted.len();
        for (i, (name, _, bucket)) in rules.iter().enumerate() {
            if remaining[i] == 0 {
                continue;
            }
            // keep-last counts every snapshot; the others one per calendar bucket.
            let b = if i == 0 { idx as i64 } else { bucket(&t) };
            if last_bucket[i] != Some(b) {
                last_bucket[i] = Some(b);
                remaining[i] -= 1;
                let k = if i == 0 { idx } else { keeper[i][&b] };
                reasons[k].push(name.to_string());
            } else if oldest {
                // As restic: a rule with budget left also keeps the group's oldest snapshot,
                // so a history shorter than the rules still keeps its full length.
                remaining[i] -= 1;
                reasons[idx].push(format!("oldest {name}"));
            }
        }
        if let (Some(w), Some(n)) = (p.within, newest)
            && s.time.unix_nanos() >= n - w.num_nanoseconds().unwrap_or(i64::MAX) as i128
        {
            reasons[idx].push("within".into());
        }
        if !p.tags.is_empty() && s.has_tags(&p.tags) {
            reasons[idx].push("has tag".into());
        }
    }
    sorted
        .iter()
        .zip(reasons)
        .map(|((id, s), reasons)| Decision {
            id: id.to_hex(),
            time: s.time.to_string(),
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

/// Group key restic uses by default: host and paths.
pub fn group_key(s: &Snapshot, by: &[String]) -> String {
    let mut parts = Vec::new();
    for b in by {
        match b.as_str() {
            "host" => parts.push(format!("host={}", s.hostname)),
            "paths" => {
                let mut p = s.paths.clone();
                p.sort();
                parts.push(format!("paths={}", p.join(",")));
            }
            "tags" => {
                let mut t = s.tags.clone();
                t.sort();
                parts.push(format!("tags={}", t.join(",")));
            }
            _ => {}
        }
    }
    parts.join(";")
}

pub fn group(snaps: &[(Id, Snapshot)], by: &[String]) -> BTreeMap<String, Vec<(Id, Snapshot)>> {
    let mut m: BTreeMap<String, Vec<(Id, Snapshot)>> = BTreeMap::new();
    for (id, s) in snaps {
        m.entry(group_key(s, by))
            .or_default()
            .push((*id, s.clone()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::time::GoTime;

    fn history(days: i64, per_day: i64) -> Vec<(Id, Snapshot)> {
        // Daily snapshots at 01:00 and 13:00 UTC from 2024-01-01 on.
        let base = DateTime::parse_from_rfc3339("2024-01-01T01:00:00Z").unwrap();
        let mut v = Vec::new();
        for d in 0..days {
            for h in 0..per_day {
                let t = base + chrono::Duration::days(d) + chrono::Duration::hours(12 * h);
                let s = Snapshot {
                    time: GoTime(t),
                    hostname: "h".into(),
                    paths: vec!["/data".into()],
                    ..Default::default()
                };
                v.push((Id::hash(t.to_string().as_bytes()), s));
            }
        }
        v
    }

    #[test]
    fn snapshots_written_out_of_order_cannot_evict_bucket_keepers() {
        // Two snapshots a day, each written an hour after it claims; then, written a year
        // later, one forgery a second newer than every real one but the newest (which no
        // later claim follows: trusted retention's vetting window guards that one).
        let real = history(30, 2);
        let mut written = HashMap::new();
        for (id, s) in &real {
            written.insert(
                *id,
                SystemTime::from(s.time.0) + std::time::Duration::from_secs(3600),
            );
        }
        let late = SystemTime::from(real.last().unwrap().1.time.0)
            + std::time::Duration::from_secs(365 * 86_400);
        let mut all = real.clone();
        for (id, s) in &real[..real.len() - 1] {
            let mut f = s.clone();
            f.time = GoTime(s.time.0 + chrono::Duration::seconds(1));
            let fid = Id::hash(format!("forged {id:?}").as_bytes());
            written.insert(fid, late);
            all.push((fid, f));
        }
        let p = Policy {
            daily: 7,
            weekly: 2,
            ..Default::default()
        };
        let honest = kept(&apply_in_write_order(&real, &written, &p));
        assert_eq!(
            honest,
            kept(&apply(&real, &p)),
            "an honest history keeps restic's choice"
        );
        let attacked = kept(&apply_in_write_order(&all, &written, &p));
        // `kept` lists claimed times; forgeries claim a second more than any real one.
        let real_ids: std::collections::BTreeSet<String> =
            real.iter().map(|(_, s)| s.time.to_string()).collect();
        let real_attacked: Vec<_> = attacked
            .iter()
            .filter(|i| real_ids.contains(*i))
            .cloned()
            .collect();
        assert_eq!(
            real_attacked, honest,
            "a later write evicted a bucket keeper"
        );
        // restic's rule, on the same input, keeps only forgeries (and the newest real one).
        let restic_real = kept(&apply(&all, &p))
            .into_iter()
            .filter(|i| real_ids.contains(i))
            .count();
        assert_eq!(restic_real, 1);
        // Without write times the two agree.
        assert_eq!(
            kept(&apply_in_write_order(&all, &HashMap::new(), &p)),
            kept(&apply(&all, &p))
        );
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter(|x| x.keep)
            .map(|x| x.time.clone())
            .collect()
    }

    #[test]
    fn seven_daily_four_weekly_six_monthly() {
        let snaps = history(366, 2); // 2024 is a leap year: through 2024-12-31
        let p = Policy {
            daily: 7,
            weekly: 4,
            monthly: 6,
            ..Default::default()
        };
        let d = apply(&snaps, &p);
        let k = kept(&d);
        // Daily: newest of each of the last 7 days (13:00 runs).
        for day in 25..=31 {
            assert!(
                k.contains(&format!("2024-12-{day}T13:00:00Z")),
                "{day}: {k:?}"
            );
        }
        // Weekly: newest of ISO weeks; Sundays 12-29 (in daily), 12-22, 12-15, 12-08 and the
        // 12-31 week (week 1 of 2025) is one of the four.
        for day in ["2024-12-22", "2024-12-15"] {
            assert!(k.contains(&format!("{day}T13:00:00Z")), "{day}: {k:?}");
        }
        // Monthly: last of Dec (already), Nov, Oct, Sep, Aug, Jul.
        for m in [
            "2024-11-30",
            "2024-10-31",
            "2024-09-30",
            "2024-08-31",
            "2024-07-31",
        ] {
            assert!(k.contains(&format!("{m}T13:00:00Z")), "{m}: {k:?}");
        }
        assert!(!k.contains(&"2024-06-30T13:00:00Z".to_string()));
        // 7 daily + weekly adds 12-22 and 12-15 (12-31/12-29 already daily) + 5 monthly.
        assert_eq!(k.len(), 7 + 2 + 5, "{k:?}");
        let r = d.iter().find(|x| x.time == "2024-12-31T13:00:00Z").unwrap();
        assert_eq!(
            r.reasons,
            vec!["daily snapshot", "weekly snapshot", "monthly snapshot"]
        );
        assert_eq!(d.len(), 732);
    }

    #[test]
    fn last_within_tags_and_empty_policy() {
        let mut snaps = history(10, 1);
        snaps[0].1.tags = vec!["keep".into()];
        let d = apply(
            &snaps,
            &Policy {
                last: 3,
                ..Default::default()
            },
        );
        assert_eq!(kept(&d).len(), 3);
        assert_eq!(kept(&d)[0], "2024-01-10T01:00:00Z");
        let d = apply(
            &snaps,
            &Policy {
                within: Some(parse_duration("2d").unwrap()),
                tags: vec!["keep".into()],
                ..Default::default()
            },
        );
        let k = kept(&d);
        assert_eq!(
            k,
            vec![
                "2024-01-10T01:00:00Z",
                "2024-01-09T01:00:00Z",
                "2024-01-08T01:00:00Z",
                "2024-01-01T01:00:00Z"
            ]
        );
        assert!(apply(&snaps, &Policy::default()).iter().all(|x| !x.keep));
        assert!(Policy::default().is_empty());
        assert!(parse_duration("1y2m3d4h").is_ok());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5w").is_err());
        let hourly = apply(
            &history(3, 2),
            &Policy {
                hourly: 100,
                ..Default::default()
            },
        );
        assert_eq!(kept(&hourly).len(), 6);
        let yearly = apply(
            &history(400, 1),
            &Policy {
                yearly: 5,
                ..Default::default()
            },
        );
        // Two years seen, three left in the budget: the oldest snapshot is kept too.
        assert_eq!(
            kept(&yearly),
            vec![
                "2025-02-03T01:00:00Z",
                "2024-12-31T01:00:00Z",
                "2024-01-01T01:00:00Z"
            ]
        );
    }

    #[test]
    fn a_rule_with_budget_left_keeps_the_oldest_snapshot_as_restic_does() {
        // restic 0.19.1 `forget --keep-daily 7` over 01-01 09:00, 01-01 10:00, 01-02 10:00
        // keeps all three, the first as "oldest daily snapshot".
        let snaps = history(2, 2); // 01-01 01:00, 01-01 13:00, 01-02 01:00, 01-02 13:00
        let daily = |n| Policy {
            daily: n,
            ..Default::default()
        };
        let d = apply(&snaps, &daily(7));
        assert_eq!(
            kept(&d),
            vec![
                "2024-01-02T13:00:00Z",
                "2024-01-01T13:00:00Z",
                "2024-01-01T01:00:00Z"
            ]
        );
        assert_eq!(d[3].reasons, vec!["oldest daily snapshot"]);
        // Budget used up by the newer days: the oldest goes.
        let d = apply(&snaps, &daily(2));
        assert_eq!(
            kept(&d),
            vec!["2024-01-02T13:00:00Z", "2024-01-01T13:00:00Z"]
        );
        // A single snapshot is kept once, for its own bucket.
        let d = apply(&snaps[..1], &daily(7));
        assert_eq!(d[0].reasons, vec!["daily snapshot"]);
        // keep-last never needs the rule: every snapshot is its own bucket.
        let d = apply(
            &snaps,
            &Policy {
                last: 9,
                ..Default::default()
            },
        );
        assert!(d.iter().all(|x| x.reasons == ["last snapshot"]));
    }
}

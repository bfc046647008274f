//! Operator-side maintenance (forget + prune) for `RetentionPolicy` with `runOn: Operator`.
//!
//! Three pieces, each small enough to reason about alone:
//! - a calendar evaluator for the subset of systemd `OnCalendar` the operator schedules by
//!   itself (hosts have systemd; the operator does not),
//! - a per-repository async mutex, so two policies (or two reconciles) never run
//!   maintenance on the same repository at once,
//! - the blocking forget + prune itself, through the `fleetsnap` library, with credentials
//!   held in memory only (never argv, never the environment).

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, Timelike, Utc};
use fleetsnap::backend::{self, Backend, Location, S3Backend, S3Options};
use fleetsnap::repo::{RepoError, Repository};
use fleetsnap::snapshot_times::{Tolerance, vet};
use fleetsnap_crds::common::KeepRules;
use fleetsnap_crds::retention_policy::PruneOptions;

use crate::host::model::SecretBytes;

// ---------------------------------------------------------------------------------------
// Calendar

/// A parsed `OnCalendar` expression, evaluated in UTC.
///
/// Supported: the shorthands (`minutely` … `yearly`), and `[WEEKDAYS] [Y-M-D] H:M[:S]` where
/// each numeric field is `*`, a number, a comma list, a range `a..b` or a step `a/n`, and
/// weekdays are names, lists or ranges. Not supported (rejected, so a policy never silently
/// runs at the wrong time): `~` (last days of month), time zones other than UTC, and
/// fractional seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    weekdays: [bool; 7],
    years: Field,
    months: Field,
    days: Field,
    hours: Field,
    minutes: Field,
    seconds: Field,
}

/// Allowed values of one field, as a bitmap over `0..=max` (years are matched by rule).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    Any,
    Set(Vec<(u32, u32, u32)>), // (start, end inclusive, step)
}

impl Field {
    fn matches(&self, v: u32) -> bool {
        match self {
            Field::Any => true,
            Field::Set(items) => items
                .iter()
                .any(|(a, b, step)| v >= *a && v <= *b && (v - a).is_multiple_of(*step)),
        }
    }

    fn parse(s: &str, max: u32) -> Result<Field, String> {
        if s == "*" {
            return Ok(Field::Any);
        }
        let mut items = Vec::new();
        for part in s.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, st)) => (
                    r,
                    st.parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("bad step in {part:?}"))?,
                ),
                None => (part, 1),
            };
            let num = |t: &str| {
                t.parse::<u32>().map_err(|_| {
                    format!("{t:?} is not a number (supported: *, n, a..b, a/n, lists)")
                })
            };
            let (a, b) = if range == "*" {
                (0, max)
            } else if let Some((a, b)) = range.split_once("..") {
                (num(a)?, num(b)?)
            } else if part.contains('/') {
                (num(range)?, max)
            } else {
                let n = num(range)?;
                (n, n)
            };
            if a > b || b > max {
                return Err(format!("{part:?} is out of range (max {max})"));
            }
            items.push((a, b, step));
        }
        Ok(Field::Set(items))
    }
}

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn weekday_index(s: &str) -> Result<usize, String> {
    let l = s.to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .position(|w| l.starts_with(w))
        .ok_or_else(|| format!("{s:?} is not a weekday"))
}

impl Calendar {
    pub fn parse(expr: &str) -> Result<Calendar, String> {
        let e = expr.trim();
        let short = |d: &str, t: &str| Calendar::parse(&format!("{d} {t}"));
        match e.to_ascii_lowercase().as_str() {
            "minutely" => return short("*-*-*", "*:*:00"),
            "hourly" => return short("*-*-*", "*:00:00"),
            "daily" => return short("*-*-*", "00:00:00"),
            "weekly" => return Calendar::parse("Mon *-*-* 00:00:00"),
            "monthly" => return short("*-*-01", "00:00:00"),
            "yearly" | "annually" => return short("*-01-01", "00:00:00"),
            _ => {}
        }
        if e.contains('~') {
            return Err(
                "'~' (days from the end of the month) is not supported for operator-side schedules"
                    .into(),
            );
        }
        let mut parts: Vec<&str> = e.split_whitespace().collect();
        if parts.last().is_some_and(|p| p.eq_ignore_ascii_case("UTC")) {
            parts.pop();
        }
        let mut weekdays = [true; 7];
        if let Some(first) = parts.first()
            && first
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
        {
            weekdays = [false; 7];
            for item in first.split(',') {
                match item.split_once("..") {
                    Some((a, b)) => {
                        let (a, b) = (weekday_index(a)?, weekday_index(b)?);
                        let mut i = a;
                        loop {
                            weekdays[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => weekdays[weekday_index(item)?] = true,
                }
            }
            parts.remove(0);
        }
        let (date, time) = match parts.as_slice() {
            [] => ("*-*-*", "00:00:00"),
            [one] if one.contains(':') => ("*-*-*", *one),
            [one] => (*one, "00:00:00"),
            [d, t] => (*d, *t),
            _ => return Err(format!("cannot read calendar expression {expr:?}")),
        };
        let d: Vec<&str> = date.split('-').collect();
        let (y, m, dd) = match d.as_slice() {
            [y, m, dd] => (*y, *m, *dd),
            [m, dd] => ("*", *m, *dd),
            _ => return Err(format!("cannot read date {date:?}")),
        };
        let t: Vec<&str> = time.split(':').collect();
        let (h, mi, s) = match t.as_slice() {
            [h, mi] => (*h, *mi, "00"),
            [h, mi, s] => (*h, *mi, *s),
            _ => return Err(format!("cannot read time {time:?}")),
        };
        if s.contains('.') {
            return Err("fractional seconds are not supported".into());
        }
        Ok(Calendar {
            weekdays,
            years: Field::parse(y, 9999)?,
            months: Field::parse(m, 12)?,
            days: Field::parse(dd, 31)?,
            hours: Field::parse(h, 23)?,
            minutes: Field::parse(mi, 59)?,
            seconds: Field::parse(s, 59)?,
        })
    }

    fn date_matches(&self, d: NaiveDate) -> bool {
        self.weekdays[d.weekday().num_days_from_monday() as usize]
            && self.years.matches(d.year().max(0) as u32)
            && self.months.matches(d.month())
            && self.days.matches(d.day())
    }

    /// First instant strictly after `after` that the expression matches, looking at most
    /// about eight years ahead (enough for any leap-day rule).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after + ChronoDuration::seconds(1);
        let mut day = start.date_naive();
        for _ in 0..(366 * 8) {
            if self.date_matches(day) {
                let from = if day == start.date_naive() {
                    start.time().num_seconds_from_midnight()
                } else {
                    0
                };
                if let Some(secs) = self.first_time_from(from) {
                    let t = day.and_hms_opt(secs / 3600, secs / 60 % 60, secs % 60)?;
                    return Some(t.and_utc());
                }
            }
            day = day.succ_opt()?;
        }
        None
    }

    fn first_time_from(&self, from: u32) -> Option<u32> {
        for h in (from / 3600)..24 {
            if !self.hours.matches(h) {
                continue;
            }
            for m in 0..60 {
                if !self.minutes.matches(m) {
                    continue;
                }
                for s in 0..60 {
                    let t = h * 3600 + m * 60 + s;
                    if t >= from && self.seconds.matches(s) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// Serialisation

/// One async mutex per repository URL, process-wide: every maintenance run takes the lock
/// of its repository first, so runs from different policies or reconciles queue up instead
/// of fighting over the repository's exclusive restic lock.
pub fn repository_lock(url: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(url.to_string()).or_default().clone()
}

// ---------------------------------------------------------------------------------------
// Forget + prune

/// What one repository's maintenance did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub kept: u64,
    pub removed: u64,
    pub reclaimed_bytes: u64,
    /// Objects the bucket refused to delete because Object Lock still protects them.
    pub locked_objects: u64,
    /// Snapshots whose claimed time the storage contradicts: neither counted towards a keep
    /// rule nor removed. The count is exact; `suspects` holds the first few, described.
    pub suspicious: u64,
    pub suspects: Vec<String>,
}

/// How many suspicious snapshots a report describes one by one (status and Events quote
/// them; the count says how many there are).
pub const SUSPECTS_DESCRIBED: usize = 5;

/// Why maintenance failed; `locked` tells the caller to try again soon rather than alarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceError {
    pub message: String,
    pub locked: bool,
}

/// Everything one run needs. Debug is safe to log: secrets print as `<redacted>`.
#[derive(Clone, Debug)]
pub struct MaintenanceJob {
    pub repository: String,
    pub password: SecretBytes,
    /// The storage keys, as every user of the repository reads them (S3 keys with an
    /// optional session token, or a REST login); empty for the operator's own chain.
    pub keys: super::derive::StorageKeys,
    pub keep: KeepRules,
    pub prune: PruneOptions,
    /// Believe snapshot times only inside this tolerance of the storage's write times;
    /// `None` takes them as claimed (restic's semantics).
    pub trust: Option<Tolerance>,
}

/// The executor's keep policy from the CRD's keep rules.
pub fn keep_policy(k: &KeepRules) -> Result<fleetsnap::forget::Policy, String> {
    let n = |v: Option<i32>| v.unwrap_or(0).max(0) as u32;
    Ok(fleetsnap::forget::Policy {
        last: n(k.last),
        hourly: n(k.hourly),
        daily: n(k.daily),
        weekly: n(k.weekly),
        monthly: n(k.monthly),
        yearly: n(k.yearly),
        within: k
            .within
            .as_deref()
            .map(fleetsnap::forget::parse_duration)
            .transpose()?,
        tags: k.tags.clone(),
        within_anchor: None,
    })
}

fn open_backend(job: &MaintenanceJob) -> Result<Arc<dyn Backend>, String> {
    let text = |b: &SecretBytes| String::from_utf8_lossy(b.expose()).trim().to_string();
    let opened: Result<Arc<dyn Backend>, _> = match backend::url::parse(&job.repository) {
        Ok(Location::S3(loc)) if job.keys.aws.is_some() => {
            let aws = job.keys.aws.as_ref().expect("checked");
            S3Backend::open(
                loc,
                S3Options {
                    static_credentials: Some((
                        text(&aws.access_key_id),
                        text(&aws.secret_access_key),
                    )),
                    session_token: aws.session_token.as_ref().map(text),
                    ..S3Options::from_env()
                },
            )
            .map(|b| Arc::new(b) as Arc<dyn Backend>)
        }
        Ok(Location::Rest(loc)) if job.keys.rest.is_some() => {
            let rest = job.keys.rest.as_ref().expect("checked");
            let login = Some((text(&rest.username), Some(text(&rest.password))));
            backend::RestBackend::open(backend::with_rest_login(loc, login))
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
        }
        _ => backend::open(&job.repository),
    };
    opened.map_err(|e| e.to_string())
}

/// Runs forget (and prune when enabled) against one repository. Blocking: call it from a
/// dedicated thread. Takes the repository's exclusive restic lock, so a host-side backup in
/// progress makes this fail with `locked` instead of racing it.
pub fn run_blocking(job: &MaintenanceJob) -> Result<MaintenanceReport, MaintenanceError> {
    let fail = |message: String| MaintenanceError {
        message,
        locked: false,
    };
    let policy = keep_policy(&job.keep).map_err(fail)?;
    if policy.is_empty() {
        return Err(fail(
            "no keep rule: refusing to forget every snapshot".into(),
        ));
    }
    let backend = open_backend(job).map_err(fail)?;
    // Same normalisation as the executor on the hosts, or a Secret ending in a newline would
    // open the repository there but not here.
    let password = fleetsnap::password::normalize(job.password.expose().to_vec());
    let repo = Repository::open(backend, &password).map_err(|e| fail(e.to_string()))?;
    let _lock = fleetsnap::lock::acquire(&repo, true).map_err(|e| MaintenanceError {
        locked: matches!(e, RepoError::Locked(_)),
        message: e.to_string(),
    })?;
    let listed = repo
        .snapshots_with_write_times()
        .map_err(|e| fail(e.to_string()))?;
    let mut report = MaintenanceReport::default();
    let (snaps, written, policy) = match &job.trust {
        Some(tol) => {
            let now = chrono::Utc::now();
            let vetted = vet(listed, now, tol);
            report.suspicious = vetted.suspects.len() as u64;
            report.suspects = vetted
                .suspects
                .iter()
                .take(SUSPECTS_DESCRIBED)
                .map(ToString::to_string)
                .collect();
            let policy = fleetsnap::forget::Policy {
                within_anchor: Some(now),
                ..policy
            };
            (vetted.trusted, Some(vetted.written), policy)
        }
        None => (
            listed.into_iter().map(|(id, s, _)| (id, s)).collect(),
            None,
            policy,
        ),
    };
    let by = vec!["host".to_string(), "paths".to_string()];
    let mut remove = Vec::new();
    for (_, members) in fleetsnap::forget::group(&snaps, &by) {
        let decisions = match &written {
            Some(w) => fleetsnap::forget::apply_in_write_order(&members, w, &policy),
            None => fleetsnap::forget::apply(&members, &policy),
        };
        for d in decisions {
            if d.keep {
                report.kept += 1;
            } else {
                remove.push(d.id);
            }
        }
    }
    let mut retained = 0u64;
    for id in &remove {
        // Nothing more is deleted once our exclusive lock is lost.
        repo.check_lock().map_err(|e| fail(e.to_string()))?;
        // Permanently where the storage allows: on an Object Lock bucket a forgotten
        // snapshot's versions go once their lock expired, and are counted while it holds.
        let removal = repo
            .backend()
            .remove_permanently(fleetsnap::backend::FileType::Snapshot, id)
            .map_err(|e| fail(format!("removing snapshot {}: {e}", &id[..8.min(id.len())])))?;
        if matches!(removal, fleetsnap::backend::Removal::Retained { .. }) {
            retained += 1;
        }
        report.removed += 1;
    }
    report.locked_objects = retained;
    if job.prune.enabled {
        use fleetsnap::prune::plan::{MaxUnused, PlanOptions, parse_size};
        let opts = fleetsnap::prune::PruneOptions {
            plan: PlanOptions {
                max_unused: MaxUnused::parse(&job.prune.max_unused).map_err(fail)?,
                max_repack_size: job
                    .prune
                    .max_repack_size
                    .as_deref()
                    .map(parse_size)
                    .transpose()
                    .map_err(fail)?,
                version: repo.version(),
                // The safe defaults: a 24 h grace period by the storage's own times, and
                // packs of unknown age (REST) kept. Hosts write to this repository, and a
                // backup whose lock was taken for stale may still be writing.
                ..PlanOptions::default()
            },
            dry_run: false,
        };
        let rep = fleetsnap::prune::prune(repo, &opts).map_err(|e| fail(e.to_string()))?;
        report.reclaimed_bytes = rep.plan.stats.bytes_reclaimed;
        report.locked_objects += rep.executed.map(|x| x.locked.len() as u64).unwrap_or(0);
    }
    Ok(report)
}

/// Runs [`run_blocking`] on its own OS thread: the S3 backend builds its own runtime, which
/// must not happen on a thread that is part of the operator's runtime.
pub async fn run(job: MaintenanceJob) -> Result<MaintenanceReport, MaintenanceError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fleetsnap-maintenance".into())
        .spawn(move || {
            let _ = tx.send(run_blocking(&job));
        })
        .map_err(|e| MaintenanceError {
            message: format!("cannot start the maintenance thread: {e}"),
            locked: false,
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(MaintenanceError {
            message: "maintenance thread panicked".into(),
            locked: false,
        })
    })
}

/// The repository URL the operator uses: hosts and the operator may reach the storage at
/// different addresses (a node-local name versus an in-cluster Service), so an override can
/// replace the base of the hosts' URL: `FLEETSNAP_MAINTENANCE_S3_ENDPOINT` the endpoint of
/// `s3:` URLs, `FLEETSNAP_MAINTENANCE_REST_URL` the server URL of `rest:` URLs. `base` is the
/// part being replaced (the S3 endpoint or the REST server URL of the repository's spec).
pub fn operator_repository_url(host_url: &str, base: &str, override_base: Option<&str>) -> String {
    let Some(o) = override_base.filter(|o| !o.is_empty()) else {
        return host_url.to_string();
    };
    for scheme in ["s3:", "rest:"] {
        if let Some(rest) = host_url.strip_prefix(scheme)
            && let Some(tail) = rest.strip_prefix(base.trim_end_matches('/'))
        {
            return format!("{scheme}{}{tail}", o.trim_end_matches('/'));
        }
    }
    host_url.to_string()
}

/// The operator environment's override for the repository's backend (see
/// [`operator_repository_url`]), with the base it replaces.
pub fn operator_override(repo: &fleetsnap_crds::BackupRepository) -> (String, Option<String>) {
    if let Some(s3) = &repo.spec.s3 {
        return (
            s3.endpoint.clone(),
            std::env::var("FLEETSNAP_MAINTENANCE_S3_ENDPOINT").ok(),
        );
    }
    if let Some(rest) = &repo.spec.rest {
        return (
            rest.url.clone(),
            std::env::var("FLEETSNAP_MAINTENANCE_REST_URL").ok(),
        );
    }
    (String::new(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn daily_and_weekly_schedules() {
        let c = Calendar::parse("*-*-* 02:00:00").unwrap();
        assert_eq!(
            c.next_after(t("2026-03-01T01:00:00Z")),
            Some(t("2026-03-01T02:00:00Z"))
        );
        // Exactly at the instant: the next one, not the same.
        assert_eq!(
            c.next_after(t("2026-03-01T02:00:00Z")),
            Some(t("2026-03-02T02:00:00Z"))
        );
        // 2026-03-01 is a Sunday.
        let sun = Calendar::parse("Sun *-*-* 04:30:00").unwrap();
        assert_eq!(
            sun.next_after(t("2026-03-01T05:00:00Z")),
            Some(t("2026-03-08T04:30:00Z"))
        );
        let weekly = Calendar::parse("weekly").unwrap();
        assert_eq!(
            weekly.next_after(t("2026-03-01T05:00:00Z")),
            Some(t("2026-03-02T00:00:00Z"))
        );
        let wd = Calendar::parse("Mon..Fri 22:00").unwrap();
        assert_eq!(
            wd.next_after(t("2026-03-06T23:00:00Z")),
            Some(t("2026-03-09T22:00:00Z"))
        );
    }

    #[test]
    fn steps_lists_and_dates() {
        let c = Calendar::parse("*-*-* *:*:00/20").unwrap();
        assert_eq!(
            c.next_after(t("2026-03-01T01:00:05Z")),
            Some(t("2026-03-01T01:00:20Z"))
        );
        assert_eq!(
            c.next_after(t("2026-03-01T01:00:40Z")),
            Some(t("2026-03-01T01:01:00Z"))
        );
        let m = Calendar::parse("monthly").unwrap();
        assert_eq!(
            m.next_after(t("2026-01-31T10:00:00Z")),
            Some(t("2026-02-01T00:00:00Z"))
        );
        let leap = Calendar::parse("*-02-29 00:00:00").unwrap();
        assert_eq!(
            leap.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2028-02-29T00:00:00Z"))
        );
        let l = Calendar::parse("*-*-* 06,18:00").unwrap();
        assert_eq!(
            l.next_after(t("2026-01-01T07:00:00Z")),
            Some(t("2026-01-01T18:00:00Z"))
        );
    }

    #[test]
    fn unsupported_forms_are_rejected_not_guessed() {
        for bad in [
            "*-*~01 00:00",
            "Funday 02:00",
            "*-*-* 25:00:00",
            "*-*-* 02:00:00.5",
            "a b c",
        ] {
            assert!(Calendar::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_rules_map_to_the_executor_policy() {
        let k = KeepRules {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(6),
            within: Some("14d".into()),
            ..Default::default()
        };
        let p = keep_policy(&k).unwrap();
        assert_eq!((p.daily, p.weekly, p.monthly, p.last), (7, 4, 6, 0));
        assert_eq!(p.within, Some(chrono::Duration::days(14)));
        assert!(keep_policy(&KeepRules::default()).unwrap().is_empty());
    }

    #[test]
    fn endpoint_override_only_touches_s3_urls_with_that_endpoint() {
        let u = "s3:http://10.0.2.100:9000/b/hosts/h1";
        assert_eq!(
            operator_repository_url(u, "http://10.0.2.100:9000", Some("http://127.0.0.1:9100/")),
            "s3:http://127.0.0.1:9100/b/hosts/h1"
        );
        assert_eq!(
            operator_repository_url(u, "http://10.0.2.100:9000", None),
            u
        );
        assert_eq!(
            operator_repository_url("local:/x", "e", Some("o")),
            "local:/x"
        );
    }

    #[test]
    fn one_lock_per_repository() {
        let a = repository_lock("s3:x/a");
        let a2 = repository_lock("s3:x/a");
        let b = repository_lock("s3:x/b");
        assert!(Arc::ptr_eq(&a, &a2));
        assert!(!Arc::ptr_eq(&a, &b));
    }
}

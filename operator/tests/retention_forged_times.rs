//! Operator-side retention against forged snapshot times, on a real local repository whose
//! file times stand in for the storage's write times (what S3 `LastModified` is on a bucket).
//!
//! The history: 60 daily snapshots, each written two minutes after the time it claims. The
//! attack, by a host that holds the repository password: 17 snapshots dated up to 2099 and
//! one snapshot one second newer than each real one, all written now. With restic's
//! semantics (`trust: Claimed`) the 7 daily / 4 weekly / 6 monthly rules then keep none of
//! the real snapshots; with `trust: Verified` every real snapshot the rules keep on the
//! honest history survives, and every forgery is reported, kept and never counted.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration as StdDuration, SystemTime};

use chrono::{DateTime, Duration, Utc};
use fleetsnap::backend::{Backend, FileType, LocalBackend};
use fleetsnap::format::snapshot::Snapshot;
use fleetsnap::format::time::GoTime;
use fleetsnap::id::Id;
use fleetsnap::repo::Repository;
use fleetsnap::snapshot_times::Tolerance;
use fleetsnap_crds::common::KeepRules;
use fleetsnap_crds::retention_policy::PruneOptions;
use fleetsnap_operator::controller::maintenance::{MaintenanceJob, run_blocking};
use fleetsnap_operator::host::model::SecretBytes;

const PASSWORD: &str = "forged-times";

fn keep_7_4_6() -> KeepRules {
    KeepRules {
        daily: Some(7),
        weekly: Some(4),
        monthly: Some(6),
        ..Default::default()
    }
}

fn job(dir: &Path, keep: KeepRules, trust: Option<Tolerance>) -> MaintenanceJob {
    MaintenanceJob {
        repository: dir.to_str().unwrap().to_string(),
        password: SecretBytes::new(PASSWORD),
        keys: Default::default(),
        keep,
        prune: PruneOptions {
            enabled: false,
            ..Default::default()
        },
        trust,
    }
}

fn go_time(t: DateTime<Utc>) -> GoTime {
    GoTime(t.fixed_offset())
}

/// Writes a snapshot claiming `claimed` and sets its file's time to `written`.
fn plant(
    repo: &Repository,
    dir: &Path,
    template: &Snapshot,
    claimed: DateTime<Utc>,
    written: SystemTime,
) -> Id {
    let s = Snapshot {
        time: go_time(claimed),
        ..template.clone()
    };
    let id = repo.save_unpacked(FileType::Snapshot, &s).unwrap();
    let path = dir.join("snapshots").join(id.to_hex());
    filetime::set_file_mtime(&path, filetime::FileTime::from_system_time(written)).unwrap();
    id
}

/// The snapshots left, by the time each claims (ids are hashes of encrypted files, so they
/// differ between two histories built alike; the claimed times do not).
fn left(repo_dir: &Path) -> BTreeSet<DateTime<Utc>> {
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(repo_dir));
    Repository::open(be, PASSWORD.as_bytes())
        .unwrap()
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(_, s)| s.time.0.with_timezone(&Utc))
        .collect()
}

struct History {
    dir: tempfile::TempDir,
    real: Vec<(Id, DateTime<Utc>)>,
    forged: BTreeSet<Id>,
    forged_times: BTreeSet<DateTime<Utc>>,
}

/// 60 real daily snapshots at 02:00 UTC, the newest two days ago (so that every forgery
/// claims a time over a day before its write, at any hour the test runs); then the forgeries.
fn attacked_history(now: DateTime<Utc>) -> History {
    let dir = tempfile::tempdir().unwrap();
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()));
    let repo = Repository::init(be, PASSWORD.as_bytes()).unwrap();
    let template = Snapshot {
        paths: vec!["/etc".into()],
        hostname: "h1".into(),
        username: "root".into(),
        ..Default::default()
    };
    let today = now.date_naive().and_hms_opt(2, 0, 0).unwrap().and_utc();
    let mut real = Vec::new();
    for d in (2..=61).rev() {
        let claimed = today - Duration::days(d);
        let written = SystemTime::from(claimed + Duration::minutes(2));
        real.push((
            plant(&repo, dir.path(), &template, claimed, written),
            claimed,
        ));
    }
    let mut forged = BTreeSet::new();
    let mut forged_times = BTreeSet::new();
    let written_now = SystemTime::from(now);
    // Future-dated, as `restic backup --time 2099-…` writes them, and one second newer than
    // each real snapshot: the keeper of every daily, weekly and monthly bucket under
    // restic's newest-first rule.
    let future = "2099-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
    let claims = (0..17)
        .map(|i| future + Duration::days(i * 7))
        .chain(real.iter().map(|(_, t)| *t + Duration::seconds(1)))
        .collect::<Vec<_>>();
    for claimed in claims {
        forged.insert(plant(&repo, dir.path(), &template, claimed, written_now));
        forged_times.insert(claimed);
    }
    History {
        dir,
        real,
        forged,
        forged_times,
    }
}

/// The real snapshots 7/4/6 keeps on the history without the attack (restic's semantics).
fn honest_keep(now: DateTime<Utc>) -> BTreeSet<DateTime<Utc>> {
    let h = attacked_history(now);
    for id in &h.forged {
        std::fs::remove_file(h.dir.path().join("snapshots").join(id.to_hex())).unwrap();
    }
    run_blocking(&job(h.dir.path(), keep_7_4_6(), None)).unwrap();
    left(h.dir.path())
}

#[test]
fn claimed_times_let_forgeries_evict_the_real_history() {
    let now = Utc::now();
    let h = attacked_history(now);
    let rep = run_blocking(&job(h.dir.path(), keep_7_4_6(), None)).unwrap();
    let left = left(h.dir.path());
    let real_left: Vec<_> = h.real.iter().filter(|(_, t)| left.contains(t)).collect();
    // This is the attack restic documents, reproduced on purpose: with claimed times the
    // forgeries win every bucket.
    assert!(
        real_left.is_empty(),
        "restic's semantics kept real snapshots {real_left:?} ({rep:?})"
    );
}

#[test]
fn verified_times_keep_every_real_snapshot_the_rules_keep() {
    let now = Utc::now();
    let expected = honest_keep(now);
    assert!(expected.len() >= 10, "{expected:?}");
    let h = attacked_history(now);
    let rep = run_blocking(&job(h.dir.path(), keep_7_4_6(), Some(Tolerance::default()))).unwrap();
    let left = left(h.dir.path());
    let lost: Vec<_> = expected.iter().filter(|t| !left.contains(t)).collect();
    assert!(lost.is_empty(), "real snapshots lost: {lost:?} ({rep:?})");
    // The real ones the rules do not keep still go: retention keeps working.
    let real: BTreeSet<DateTime<Utc>> = h.real.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        left.intersection(&real).copied().collect::<BTreeSet<_>>(),
        expected
    );
    // Every forgery is kept, reported and counted as suspicious, none towards a rule.
    assert!(h.forged_times.iter().all(|t| left.contains(t)));
    assert_eq!(rep.suspicious, h.forged.len() as u64, "{rep:?}");
    assert_eq!(rep.kept, expected.len() as u64, "{rep:?}");
    assert!(
        rep.suspects.len() == 5 && rep.suspects.iter().all(|s| s.contains("claims")),
        "{:?}",
        rep.suspects
    );
}

#[test]
fn keep_within_counts_back_from_the_operators_clock() {
    // keepWithin 10 days on restic's semantics counts back from the newest snapshot: one
    // snapshot dated 2099 moves the window past every real one.
    let now = Utc::now();
    let within = KeepRules {
        within: Some("10d".into()),
        ..Default::default()
    };
    let h = attacked_history(now);
    run_blocking(&job(h.dir.path(), within.clone(), None)).unwrap();
    let kept = left(h.dir.path());
    assert!(h.real.iter().all(|(_, t)| !kept.contains(t)));

    let h = attacked_history(now);
    run_blocking(&job(h.dir.path(), within, Some(Tolerance::default()))).unwrap();
    let kept = left(h.dir.path());
    let recent: Vec<_> = h
        .real
        .iter()
        .filter(|(_, t)| now - *t <= Duration::days(10))
        .map(|(_, t)| *t)
        .collect();
    assert!(recent.len() >= 7, "{recent:?}");
    assert!(
        recent.iter().all(|t| kept.contains(t)),
        "recent real snapshots lost"
    );
    // The window ends at the newest believed snapshot (the newest real one), as restic's.
    let newest_real = h.real.last().unwrap().1;
    let old_real_left = h
        .real
        .iter()
        .filter(|(_, t)| kept.contains(t) && newest_real - *t > Duration::days(10))
        .count();
    assert_eq!(old_real_left, 0, "older real snapshots are still forgotten");
}

#[test]
fn a_forgery_dated_into_the_past_cannot_reach_an_older_bucket() {
    // Written now but dated a week back, inside a bucket of the real history: its time is
    // not believed, so the real keeper of that day stays.
    let now = Utc::now();
    let h = attacked_history(now);
    let target = h.real[h.real.len() - 7];
    let be: Arc<dyn Backend> = Arc::new(LocalBackend::new(h.dir.path()));
    let repo = Repository::open(be, PASSWORD.as_bytes()).unwrap();
    let s = repo.snapshots().unwrap().remove(0).1;
    let late = plant(
        &repo,
        h.dir.path(),
        &s,
        target.1 + Duration::hours(3),
        SystemTime::now() - StdDuration::from_secs(1),
    );
    let late_time = target.1 + Duration::hours(3);
    let rep = run_blocking(&job(h.dir.path(), keep_7_4_6(), Some(Tolerance::default()))).unwrap();
    let kept = left(h.dir.path());
    assert!(
        kept.contains(&target.1) && kept.contains(&late_time),
        "{rep:?}"
    );
    assert!(rep.suspects.iter().any(|s| s.contains(&late.short())) || rep.suspicious > 5);
}

//! One function per subcommand.

use std::io::Write;
use std::path::PathBuf;

use super::*;
use crate::backup::{BackupOptions, Source};
use crate::check::Subset;
use crate::format::pack::BlobType;
use crate::format::quote::quote;
use crate::format::tree::NodeType;
use crate::lock;
use crate::pattern::PathMatcher;
use crate::repo::{IndexedRepository, Repository, SnapshotFilter};

fn filter(f: &FilterArgs) -> SnapshotFilter {
    SnapshotFilter {
        hosts: f.hosts.clone(),
        tags: f.tags.clone(),
        paths: f.paths.clone(),
    }
}

fn open(g: &Global) -> CliResult<Repository> {
    let be = g.backend()?;
    let pw = g.password()?;
    Ok(Repository::open(be, &pw)?.with_lock_wait(g.retry_lock.unwrap_or_default()))
}

/// The shared lock a read-only command holds. With `--no-lock` none is written (the
/// identity may lack write access), but an exclusive lock held by another process is still
/// honoured.
fn read_lock(g: &Global, r: &Repository) -> CliResult<Option<lock::LockGuard>> {
    if g.no_lock {
        lock::check_no_exclusive(r)?;
        return Ok(None);
    }
    Ok(Some(lock::acquire(r, false)?))
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// The literal directory part of an include pattern (`/etc/*.conf` → `/etc`).
fn literal_prefix(pattern: &str) -> &str {
    match pattern.find(['*', '?', '[']) {
        Some(i) => pattern[..i]
            .rsplit_once('/')
            .map_or("/", |(d, _)| if d.is_empty() { "/" } else { d }),
        None => pattern.trim_end_matches('/'),
    }
}

/// Whether a snapshot of `path` can hold something under `include` (or the reverse).
fn overlaps(path: &str, include: &str) -> bool {
    let (p, i) = (path.trim_end_matches('/'), literal_prefix(include));
    let under =
        |a: &str, b: &str| a == b || b.is_empty() || b == "/" || a.starts_with(&format!("{b}/"));
    under(p, i) || under(i, p)
}

/// `latest` for a restore with include paths: the newest snapshot that holds any of them. One
/// host often has several kinds of snapshot in its repository (files, a database dump); the
/// newest overall may hold nothing the restore asks for, and restoring it would "succeed"
/// with zero files.
fn latest_holding(
    snaps: impl Iterator<Item = (crate::id::Id, crate::format::snapshot::Snapshot)>,
    include: &[String],
) -> Option<(crate::id::Id, crate::format::snapshot::Snapshot)> {
    snaps
        .filter(|(_, s)| {
            s.paths
                .iter()
                .any(|p| include.iter().any(|i| overlaps(p, i)))
        })
        .last()
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string(v).expect("serializable"));
}

pub fn dispatch(cli: Cli) -> CliResult<i32> {
    let g = &cli.global;
    match cli.cmd {
        Command::Init => {
            let be = g.backend()?;
            let pw = g.password()?;
            match Repository::init(be.clone(), &pw) {
                Ok(r) => println!(
                    "created restic repository {} at {}",
                    &r.config().id[..10],
                    be.location()
                ),
                // Idempotent for automation, but only if our password opens it.
                Err(RepoError::AlreadyExists(_)) => {
                    Repository::open(be.clone(), &pw)?;
                    println!("repository at {} already exists", be.location());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Cat { what } => {
            let r = open(g)?;
            match what.as_str() {
                "config" => print_json(r.config()),
                other => return Err(usage(format!("cat {other:?}: only `config` is supported"))),
            }
        }
        Command::Key { cmd } => {
            let r = open(g)?;
            match cmd {
                KeyCmd::List => {
                    let keys = r.list_keys()?;
                    if g.json {
                        let v: Vec<_> = keys
                            .iter()
                            .map(|k| serde_json::json!({"current": k.current, "id": k.id, "userName": k.username, "hostName": k.hostname, "created": k.created}))
                            .collect();
                        print_json(&v);
                    } else {
                        for k in keys {
                            println!(
                                "{}{} {} {} {}",
                                if k.current { "*" } else { " " },
                                &k.id[..8],
                                k.username,
                                k.hostname,
                                k.created
                            );
                        }
                    }
                }
                KeyCmd::Add { new_password_file } => {
                    let _l = lock::acquire(&r, false)?;
                    let id = r.add_key(&new_password(new_password_file)?)?;
                    println!("saved new key as {}", &id[..8]);
                }
                KeyCmd::Remove { id } => {
                    let _l = lock::acquire(&r, true)?;
                    println!("removed key {}", r.remove_key(&id)?);
                }
                KeyCmd::Passwd { new_password_file } => {
                    let _l = lock::acquire(&r, true)?;
                    let id = r.change_password(&new_password(new_password_file)?)?;
                    println!("saved new key as {}", &id[..8]);
                }
            }
        }
        Command::Snapshots { filter: f, ids } => {
            let r = open(g)?;
            let _l = read_lock(g, &r)?;
            let flt = filter(&f);
            let mut snaps: Vec<_> = r
                .snapshots()?
                .into_iter()
                .filter(|(_, s)| flt.matches(s))
                .collect();
            if ids.iter().any(|i| i == "latest") {
                snaps = snaps.into_iter().last().into_iter().collect();
            } else if !ids.is_empty() {
                snaps.retain(|(id, _)| ids.iter().any(|p| id.to_hex().starts_with(p)));
            }
            if g.json {
                let v: Vec<_> = snaps
                    .iter()
                    .map(|(id, s)| {
                        let mut j = serde_json::to_value(s).expect("serializable");
                        j["id"] = id.to_hex().into();
                        j["short_id"] = id.short().into();
                        j
                    })
                    .collect();
                print_json(&v);
            } else {
                println!(
                    "{:<8}  {:<25}  {:<12}  {:<20}  paths",
                    "ID", "Time", "Host", "Tags"
                );
                for (id, s) in &snaps {
                    println!(
                        "{:<8}  {:<25}  {:<12}  {:<20}  {}",
                        id.short(),
                        s.time.to_string(),
                        s.hostname,
                        s.tags.join(","),
                        s.paths.join(" ")
                    );
                }
                println!("{} snapshots", snaps.len());
            }
        }
        Command::Stats {
            ids,
            mode,
            filter: f,
        } => {
            let mode = crate::stats::Mode::parse(&mode).map_err(usage)?;
            let r = open(g)?;
            let _l = read_lock(g, &r)?;
            let r = r.load_index()?;
            let flt = filter(&f);
            let mut snaps: Vec<_> = r
                .snapshots()?
                .into_iter()
                .filter(|(_, s)| flt.matches(s))
                .map(|(id, _)| id)
                .collect();
            if ids.iter().any(|i| i == "latest") {
                snaps = snaps.into_iter().last().into_iter().collect();
            } else if !ids.is_empty() {
                snaps.retain(|id| ids.iter().any(|p| id.to_hex().starts_with(p)));
            }
            let st = crate::stats::stats(&r, &snaps, mode)?;
            if g.json {
                print_json(&st);
            } else {
                println!("snapshots: {}", st.snapshots_count);
                if let Some(n) = st.total_file_count {
                    println!("total files: {n}");
                }
                println!("total size: {} bytes", st.total_size);
                if let (Some(u), Some(b), Some(c)) = (
                    st.total_uncompressed_size,
                    st.total_blob_count,
                    st.compression_ratio,
                ) {
                    println!("uncompressed: {u} bytes in {b} blobs (compression ratio {c:.2}x)");
                }
            }
        }
        Command::Ls {
            snapshot,
            filter: f,
        } => {
            let r = open(g)?;
            let _l = read_lock(g, &r)?;
            let r = r.load_index()?;
            let (_, s) = r.find_snapshot(&snapshot, &filter(&f))?;
            ls(&r, &s.tree, "", g.json)?;
        }
        Command::Dump {
            snapshot,
            path,
            filter: f,
        } => {
            let r = open(g)?;
            let _l = read_lock(g, &r)?;
            let r = r.load_index()?;
            let (_, s) = r.find_snapshot(&snapshot, &filter(&f))?;
            dump(&r, &s.tree, &path)?;
        }
        Command::Restore {
            snapshot,
            target,
            include,
            exclude,
            verify,
            filter: f,
        } => {
            let r = open(g)?;
            let _l = read_lock(g, &r)?;
            let r = r.load_index()?;
            let (id, s) = if snapshot == "latest" && !include.is_empty() {
                let all = r
                    .snapshots()?
                    .into_iter()
                    .filter(|(_, s)| filter(&f).matches(s));
                latest_holding(all, &include).ok_or_else(|| {
                    usage(format!(
                        "no snapshot holds any of the include paths {include:?}"
                    ))
                })?
            } else {
                r.find_snapshot(&snapshot, &filter(&f))?
            };
            let opts = crate::restore::RestoreOptions {
                target,
                include: PathMatcher::new(&include).map_err(usage)?,
                exclude: PathMatcher::new(&exclude).map_err(usage)?,
                verify,
            };
            eprintln!(
                "restoring snapshot {} to {}",
                id.short(),
                opts.target.display()
            );
            let st = crate::restore::restore(&r, &s.tree, &opts)?;
            if g.json {
                // Which snapshot `latest` (or a short ID) resolved to, for the Restore status.
                let mut v = serde_json::to_value(&st).expect("serializable");
                v["snapshot_id"] = serde_json::Value::String(id.to_hex());
                print_json(&v);
            } else {
                println!(
                    "restored {} files, {} dirs, {} others, {} bytes",
                    st.files, st.dirs, st.other, st.bytes
                );
                if verify {
                    println!("verified {} files", st.verified_files);
                }
            }
            for e in &st.errors {
                eprintln!("error: {e}");
            }
            if !st.errors.is_empty() {
                return Err(CliError::Usage(format!(
                    "{} errors during restore",
                    st.errors.len()
                )));
            }
        }
        Command::Check {
            read_data,
            read_data_subset,
            read_data_rotate,
        } => {
            let r = open(g)?;
            let _l = lock::acquire(&r, true)?;
            let subset = match (read_data, read_data_subset, read_data_rotate) {
                (_, Some(s), _) => Some(Subset::parse(&s).map_err(usage)?),
                (_, None, Some(s)) => match Subset::parse(&s).map_err(usage)? {
                    rot @ Subset::Rotate { .. } => Some(rot),
                    _ => return Err(usage("--read-data-rotate takes m/week, m/day or m/month")),
                },
                (true, None, None) => Some(Subset::All),
                _ => None,
            };
            let rep = crate::check::check(r, subset)?;
            if g.json {
                print_json(&rep);
            } else {
                for w in &rep.warnings {
                    println!("warning: {w}");
                }
                if let Some(s) = &rep.subset {
                    println!("read {} of {} packs ({s})", rep.packs_read.len(), rep.packs);
                    for p in &rep.packs_read {
                        println!("  read pack {p}");
                    }
                }
                for e in &rep.errors {
                    println!("error: {e}");
                }
                println!(
                    "{} snapshots, {} trees, {} packs checked",
                    rep.snapshots, rep.trees, rep.packs
                );
            }
            if !rep.ok() {
                return Err(CliError::Usage(format!(
                    "check found {} errors",
                    rep.errors.len()
                )));
            }
            if !g.json {
                println!("no errors were found");
            }
        }
        Command::Backup(a) => return backup(g, a),
        Command::Forget(a) => return forget(g, a),
        Command::Prune(a) => {
            let r = open(g)?;
            let _l = lock::acquire(&r, true)?;
            prune(g, r, &a.limits, a.dry_run)?;
        }
        Command::Run { config } => return Ok(crate::run::run_file(&config)),
        Command::Unlock { remove_all } => {
            let r = open(g)?;
            let n = crate::lock::unlock(&r, remove_all)?;
            println!("removed {} locks", n.len());
        }
    }
    Ok(EXIT_OK)
}

fn new_password(file: Option<PathBuf>) -> CliResult<Vec<u8>> {
    if let Some(f) = file {
        let v = std::fs::read(&f).map_err(|e| usage(format!("{}: {e}", f.display())))?;
        return Ok(strip_newline(v));
    }
    std::env::var("RESTIC_NEW_PASSWORD")
        .map(String::into_bytes)
        .map_err(|_| usage("give the new password with --new-password-file or RESTIC_NEW_PASSWORD"))
}

fn ls(r: &IndexedRepository, tree: &crate::id::Id, prefix: &str, json: bool) -> CliResult<()> {
    for n in r.load_tree(tree)?.nodes {
        // Names are shown Quote-escaped so non-UTF-8 bytes stay visible and unambiguous.
        let path = format!("{prefix}/{}", quote(&n.name));
        if json {
            print_json(
                &serde_json::json!({"path": path, "type": n.node_type, "size": n.size, "mode": n.mode, "mtime": n.mtime}),
            );
        } else {
            println!("{path}");
        }
        if let (NodeType::Dir, Some(st)) = (n.node_type, n.subtree) {
            ls(r, &st, &path, json)?;
        }
    }
    Ok(())
}

fn dump(r: &IndexedRepository, root: &crate::id::Id, path: &str) -> CliResult<()> {
    let mut tree = *root;
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in comps.iter().enumerate() {
        let t = r.load_tree(&tree)?;
        let n = t
            .nodes
            .iter()
            .find(|n| n.name == c.as_bytes() || quote(&n.name) == *c)
            .ok_or_else(|| usage(format!("path {path:?} not found in snapshot")))?;
        if i + 1 == comps.len() {
            if n.node_type != NodeType::File {
                return Err(usage(format!("{path:?} is not a file")));
            }
            let mut out = std::io::stdout().lock();
            for id in n.content.iter().flatten() {
                out.write_all(&r.load_blob(BlobType::Data, id)?)
                    .map_err(usage)?;
            }
            return Ok(());
        }
        tree = n
            .subtree
            .ok_or_else(|| usage(format!("{c:?} is not a directory")))?;
    }
    Err(usage("give the path of a file"))
}

fn backup(g: &Global, a: BackupArgs) -> CliResult<i32> {
    let r = open(g)?;
    let _l = lock::acquire(&r, false)?;
    let mut r = r.load_index()?;
    let mut patterns = a.exclude.clone();
    for f in &a.exclude_file {
        let s = std::fs::read_to_string(f).map_err(|e| usage(format!("{}: {e}", f.display())))?;
        patterns.extend(s.lines().map(str::to_string));
    }
    let json = g.json;
    let opts = BackupOptions {
        excludes: PathMatcher::new(&patterns).map_err(usage)?,
        exclude_patterns: patterns,
        exclude_caches: a.exclude_caches,
        one_file_system: a.one_file_system,
        tags: a.tag.iter().flat_map(|t| t.split(',').map(str::to_string)).collect(),
        host: a.host.clone().unwrap_or_else(crate::repo::hostname),
        progress: json.then(|| {
            Box::new(|p: &crate::backup::Progress| {
                print_json(&serde_json::json!({"message_type": "status", "files_done": p.files_done, "bytes_done": p.bytes_done, "seconds_elapsed": p.seconds_elapsed}));
            }) as Box<dyn FnMut(&crate::backup::Progress)>
        }),
    };
    let mut child = None;
    let source = if a.stdin_from_command {
        let (cmd, args) = a
            .command
            .split_first()
            .ok_or_else(|| usage("--stdin-from-command needs `-- CMD ARGS`"))?;
        let mut c = std::process::Command::new(cmd)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| usage(format!("running {cmd:?}: {e}")))?;
        let out = c.stdout.take().expect("piped");
        child = Some(c);
        let name = if a.stdin_filename == "stdin" {
            cmd.rsplit('/').next().unwrap_or(cmd).to_string()
        } else {
            a.stdin_filename.clone()
        };
        Source::Stream {
            filename: name,
            reader: Box::new(out),
        }
    } else if a.stdin {
        Source::Stream {
            filename: a.stdin_filename.clone(),
            reader: Box::new(std::io::stdin()),
        }
    } else {
        if a.paths.is_empty() {
            return Err(usage(
                "nothing to back up: give paths, --stdin or --stdin-from-command",
            ));
        }
        Source::Paths(a.paths.clone())
    };
    // A failing command must not produce a snapshot: check its status before committing.
    let check: Option<crate::backup::SourceCheck> = child.map(|mut c| {
        Box::new(move || {
            let st = c.wait().map_err(|e| e.to_string())?;
            if st.success() {
                Ok(())
            } else {
                Err(format!(
                    "backup command failed ({st}); no snapshot was written"
                ))
            }
        }) as crate::backup::SourceCheck
    });
    let res = crate::backup::backup_checked(&mut r, source, opts, check)?;
    if json {
        let mut v = serde_json::to_value(&res).expect("serializable");
        v["message_type"] = "summary".into();
        print_json(&v);
    } else {
        println!(
            "Files: {} new, {} changed, {} unmodified\nDirs: {} new, {} changed, {} unmodified\nAdded to the repository: {} bytes ({} stored)\nprocessed {} files, {} bytes in {:.2}s\nsnapshot {} saved",
            res.files_new,
            res.files_changed,
            res.files_unmodified,
            res.dirs_new,
            res.dirs_changed,
            res.dirs_unmodified,
            res.data_added,
            res.data_added_packed,
            res.total_files_processed,
            res.total_bytes_processed,
            res.total_duration,
            &res.snapshot_id[..8]
        );
    }
    for e in &res.errors {
        eprintln!("error: {e}");
    }
    Ok(if res.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    })
}

fn forget(g: &Global, a: ForgetArgs) -> CliResult<i32> {
    use crate::forget::{Policy, apply, group, parse_duration};
    let r = open(g)?;
    let _l = lock::acquire(&r, true)?;
    let policy = Policy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a
            .keep_within
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(usage)?,
        tags: a.keep_tag.clone(),
        within_anchor: None,
    };
    let flt = SnapshotFilter {
        hosts: a.hosts.clone(),
        tags: a.tags.clone(),
        paths: vec![],
    };
    let listed: Vec<_> = r
        .snapshots_with_write_times()?
        .into_iter()
        .filter(|(_, s, _)| flt.matches(s))
        .collect();
    if a.ids.is_empty() {
        warn_suspicious(&listed);
    }
    let snaps: Vec<_> = listed.into_iter().map(|(id, s, _)| (id, s)).collect();
    let mut remove = Vec::new();
    let mut report = Vec::new();
    if !a.ids.is_empty() {
        for (id, _) in &snaps {
            if a.ids.iter().any(|p| id.to_hex().starts_with(p)) {
                remove.push(*id);
            }
        }
    } else {
        if policy.is_empty() && !a.unsafe_allow_remove_all {
            return Err(usage(
                "no policy given: refusing to forget every snapshot (use --keep-*, or \
                 --unsafe-allow-remove-all to remove every snapshot the --host/--tag \
                 filters select)",
            ));
        }
        let by: Vec<String> = a.group_by.split(',').map(str::to_string).collect();
        for (key, members) in group(&snaps, &by) {
            let d = apply(&members, &policy);
            for x in d.iter().filter(|x| !x.keep) {
                remove.push(x.id.parse().expect("own id"));
            }
            report.push(serde_json::json!({"group": key, "decisions": d}));
        }
    }
    if g.json {
        print_json(
            &serde_json::json!({"groups": report, "remove": remove.iter().map(|i| i.to_hex()).collect::<Vec<_>>(), "dry_run": a.dry_run}),
        );
    } else {
        for grp in &report {
            println!("group {}", grp["group"]);
            for d in grp["decisions"].as_array().into_iter().flatten() {
                println!(
                    "  {} {} {} {}",
                    if d["keep"].as_bool() == Some(true) {
                        "keep  "
                    } else {
                        "remove"
                    },
                    &d["id"].as_str().unwrap_or("")[..8],
                    d["time"].as_str().unwrap_or(""),
                    d["reasons"]
                );
            }
        }
    }
    if !a.dry_run {
        let mut removed = 0;
        let mut locked = Vec::new();
        for id in &remove {
            r.check_lock()?;
            // For good, like prune: on an Object Lock bucket a plain delete would leave every
            // forgotten snapshot stored forever, unlocked or not.
            let gone = crate::prune::execute::remove_file(
                r.backend().as_ref(),
                crate::backend::FileType::Snapshot,
                &id.to_hex(),
                &mut locked,
            )?;
            removed += usize::from(gone);
        }
        if !g.json {
            println!("removed {removed} snapshots");
        }
        warn_locked(&locked);
    }
    if a.prune {
        // Same exclusive lock: nothing may add snapshots between forget and prune.
        prune(g, r, &a.limits, a.dry_run)?;
    }
    Ok(EXIT_OK)
}

fn prune(g: &Global, r: Repository, limits: &PruneLimits, dry_run: bool) -> CliResult<()> {
    use crate::prune::plan::{Action, MaxUnused, PlanOptions, parse_age, parse_size};
    let opts = crate::prune::PruneOptions {
        plan: PlanOptions {
            max_unused: MaxUnused::parse(&limits.max_unused).map_err(usage)?,
            max_repack_size: limits
                .max_repack_size
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(usage)?,
            version: r.version(),
            keep_young: parse_age(&limits.keep_young).map_err(usage)?,
            unknown_age_is_old: limits.unknown_age_is_old,
        },
        dry_run,
    };
    let rep = crate::prune::prune(r, &opts)?;
    if g.json {
        print_json(&rep);
    } else {
        let s = &rep.plan.stats;
        println!(
            "used: {} blobs, {} bytes; unused: {} bytes ({} duplicate)",
            s.blobs_used, s.bytes_used, s.bytes_unused, s.bytes_duplicate
        );
        for p in &rep.plan.packs {
            let what = match p.action {
                Action::Keep => continue,
                Action::Delete => "delete",
                Action::DeleteUnreferenced => "delete (unreferenced)",
                Action::Repack => "repack",
                Action::DropMissing => "drop from index (missing)",
                Action::KeepYoung if p.unused_bytes > 0 || p.used_bytes == 0 => {
                    "keep (younger than grace)"
                }
                Action::KeepYoung => continue,
            };
            println!(
                "  {what:<25} pack {} ({} bytes, {} unused)",
                &p.id[..16],
                p.size,
                p.unused_bytes
            );
        }
        println!(
            "{}: keep {} packs, delete {} (+{} unreferenced), repack {} ({} bytes); {} bytes reclaimed, {} bytes unused remain",
            if rep.dry_run { "would" } else { "plan" },
            s.packs_keep,
            s.packs_delete,
            s.packs_unreferenced,
            s.packs_repack,
            s.bytes_repack,
            s.bytes_reclaimed,
            s.bytes_unused_after
        );
        if s.packs_young > 0 {
            println!(
                "kept {} packs ({} bytes) younger than the grace period of {} (or of unknown age)",
                s.packs_young, s.bytes_young, limits.keep_young
            );
        }
        for b in &rep.plan.bad_copies {
            println!(
                "warning: {b} is not the blob the index says (forged or damaged); another copy is kept"
            );
        }
        if let Some(x) = &rep.executed {
            println!(
                "wrote {} packs ({} blobs) and {} index files; removed {} index files and {} packs",
                x.packs_written,
                x.blobs_repacked,
                x.index_files_written,
                x.index_files_removed,
                x.packs_removed
            );
        }
    }
    if let Some(x) = &rep.executed {
        warn_locked(&x.locked);
    }
    Ok(())
}

/// Objects a delete left in storage because of a retention lock (S3 Object Lock): worth a
/// warning, not a failure; the lock is doing what it was set up for.
/// `forget` keeps restic's semantics (claimed times decide), but says when those times
/// cannot be believed: a compromised host can date snapshots so that keep rules drop the
/// real ones. The operator's retention does not count or delete such snapshots.
fn warn_suspicious(
    snaps: &[(
        crate::id::Id,
        crate::format::snapshot::Snapshot,
        Option<std::time::SystemTime>,
    )],
) {
    use crate::snapshot_times::{Tolerance, vet};
    let suspects = vet(snaps.to_vec(), chrono::Utc::now(), &Tolerance::default()).suspects;
    if suspects.is_empty() {
        return;
    }
    eprintln!(
        "warning: {} snapshots carry times the storage contradicts; keep rules below count them \
         as claimed (a host can forge them, see docs/security.md):",
        suspects.len()
    );
    const SHOWN: usize = 10;
    for s in suspects.iter().take(SHOWN) {
        eprintln!("  {s}");
    }
    if suspects.len() > SHOWN {
        eprintln!("  ... and {} more", suspects.len() - SHOWN);
    }
}

fn warn_locked(locked: &[crate::prune::LockedObject]) {
    if locked.is_empty() {
        return;
    }
    eprintln!(
        "warning: {} objects are under a retention lock (S3 Object Lock):",
        locked.len()
    );
    for o in locked {
        eprintln!("  {o}");
    }
    if locked.iter().any(|o| o.hidden) {
        eprintln!(
            "the storage keeps those removed from the repository until their lock expires; \
             a lifecycle rule that expires noncurrent versions frees them after that"
        );
    }
    if locked.iter().any(|o| !o.hidden) {
        eprintln!(
            "those not removed stay in the repository; a prune after their lock expires deletes them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_paths_and_snapshot_paths_overlap_either_way() {
        assert!(overlaps("/etc", "/etc"));
        assert!(overlaps("/etc", "/etc/ssh/sshd_config"));
        assert!(overlaps("/etc/ssh", "/etc"));
        assert!(overlaps("/home/", "/home/alice"));
        assert!(overlaps("/pg_dumpall.sql", "/pg_dumpall.sql"));
        assert!(overlaps("/srv", "/"));
        assert!(overlaps("/etc", "/etc/*.conf"));
        assert!(overlaps("/var/lib", "/var/*/postgresql"));
        assert!(!overlaps("/pg_dumpall.sql", "/etc"));
        assert!(!overlaps("/etc", "/pg_dumpall.sql"));
        assert!(!overlaps("/etcetera", "/etc"));
        assert_eq!(literal_prefix("/etc/*.conf"), "/etc");
        assert_eq!(literal_prefix("/*"), "/");
        assert_eq!(literal_prefix("/srv/app/"), "/srv/app");
    }
}

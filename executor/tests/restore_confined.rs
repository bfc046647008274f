//! A restore never writes outside its target, whatever the snapshot holds (issue 10, item 7).
//!
//! A compromised host can write any tree it likes into the repository: symlinks where a
//! later snapshot has directories, duplicate names, names with `/` or `..`, hardlink groups
//! that mix symlinks and files. The snapshots here are crafted with the repository API so
//! that every such shape is possible, then restored (library and CLI, once and several times
//! into one target). Canaries next to the target are listed with types, modes, owners,
//! times and content hashes before and after: any difference is a write outside the target.
//!
//! Layout of each lab: `<tmp>/repo`, `<tmp>/t` (the target), `<tmp>/outside/...` (canaries).
//! Symlinks in the snapshots point at the canaries both relatively (`../outside`) and
//! absolutely (`<tmp>/outside`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use fleetsnap::backend::{Backend, LocalBackend};
use fleetsnap::backup::saver::Saver;
use fleetsnap::format::mode::{MODE_DIR, MODE_SYMLINK};
use fleetsnap::format::pack::BlobType;
use fleetsnap::format::snapshot::Snapshot;
use fleetsnap::format::time::GoTime;
use fleetsnap::format::tree::{Node, NodeType, Tree};
use fleetsnap::id::Id;
use fleetsnap::pattern::PathMatcher;
use fleetsnap::repo::{IndexedRepository, Repository};
use fleetsnap::restore::{RestoreOptions, RestoreStats, restore};

const PASSWORD: &str = "confined-pw";
/// Ownership and mode every crafted node asks for: a chown or chmod that went through a
/// link would show on a canary, which has neither.
const UID: u32 = 4242;
const PERM: u32 = 0o777;
/// 2001-09-09: far from any canary's mtime, so `utimes` through a link is visible too.
const MTIME: i64 = 1_000_000_000;

/// Blobs of crafted trees and files, stored together when the snapshot is written.
#[derive(Default)]
struct Craft {
    blobs: Vec<(BlobType, Id, Vec<u8>)>,
}

impl Craft {
    fn node(name: &[u8], t: NodeType, mode: u32) -> Node {
        let time = GoTime::from_unix(MTIME, 0);
        Node {
            name: name.to_vec(),
            node_type: t,
            mode,
            mtime: time,
            atime: time,
            ctime: time,
            uid: UID,
            gid: UID,
            ..Default::default()
        }
    }

    fn file(&mut self, name: &[u8], content: &[u8]) -> Node {
        let mut n = Craft::node(name, NodeType::File, PERM);
        let mut ids = Vec::new();
        if !content.is_empty() {
            let id = Id::hash(content);
            self.blobs.push((BlobType::Data, id, content.to_vec()));
            ids.push(id);
        }
        n.size = content.len() as u64;
        n.content = Some(ids);
        n
    }

    /// A file that claims to be one of `links` names of inode `inode`.
    fn hardlink(&mut self, name: &[u8], content: &[u8], inode: u64, links: u64) -> Node {
        let mut n = self.file(name, content);
        n.inode = inode;
        n.device_id = 1;
        n.links = links;
        n
    }

    fn symlink(name: &[u8], target: &[u8]) -> Node {
        let mut n = Craft::node(name, NodeType::Symlink, MODE_SYMLINK | 0o777);
        n.set_link_target(target);
        n
    }

    fn dir(&mut self, name: &[u8], children: Vec<Node>) -> Node {
        let mut n = Craft::node(name, NodeType::Dir, MODE_DIR | PERM);
        n.subtree = Some(self.tree(children));
        n
    }

    /// A tree blob with the nodes exactly as given: no sorting, duplicates kept (restic's
    /// own serializer, `Tree::to_json`, would refuse what an attacker can still upload).
    fn tree(&mut self, nodes: Vec<Node>) -> Id {
        let mut json = serde_json::to_vec(&Tree { nodes }).unwrap();
        json.push(b'\n');
        let id = Id::hash(&json);
        self.blobs.push((BlobType::Tree, id, json));
        id
    }
}

struct Lab {
    tmp: tempfile::TempDir,
    repo: IndexedRepository,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let be: std::sync::Arc<dyn Backend> =
            std::sync::Arc::new(LocalBackend::new(tmp.path().join("repo")));
        let repo = Repository::init(be, PASSWORD.as_bytes())
            .unwrap()
            .load_index()
            .unwrap();
        let out = tmp.path().join("outside");
        fs::create_dir_all(out.join(".ssh")).unwrap();
        fs::create_dir_all(out.join("d/sub")).unwrap();
        fs::write(out.join("victim.txt"), b"original victim\n").unwrap();
        fs::write(
            out.join(".ssh/authorized_keys"),
            b"ssh-ed25519 AAAA owner\n",
        )
        .unwrap();
        fs::write(out.join("d/sub/f"), b"deep canary\n").unwrap();
        fs::write(out.join("x"), b"canary named like a snapshot entry\n").unwrap();
        for (p, m) in [
            ("victim.txt", 0o640),
            (".ssh/authorized_keys", 0o600),
            (".ssh", 0o700),
            ("d", 0o750),
            ("d/sub", 0o750),
            ("d/sub/f", 0o640),
            ("x", 0o644),
        ] {
            fs::set_permissions(out.join(p), fs::Permissions::from_mode(m)).unwrap();
        }
        Lab { tmp, repo }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn outside_abs(&self, rel: &str) -> Vec<u8> {
        let p = self.path("outside").join(rel);
        p.as_os_str().as_bytes().to_vec()
    }

    /// Store the blobs and a snapshot of `root`; returns the snapshot ID.
    fn snapshot(&mut self, mut craft: Craft, root: Vec<Node>) -> Id {
        let tree = craft.tree(root);
        let saver = Saver::new(&self.repo, 1, 1);
        for (t, id, plain) in craft.blobs {
            saver.save(t, id, plain, false).unwrap();
        }
        let (stored, _) = saver.finish().unwrap();
        fleetsnap::backup::write_index(&self.repo, &stored).unwrap();
        for (pack, blobs) in &stored {
            self.repo.index_mut().add_pack(*pack, blobs);
        }
        let snap = Snapshot {
            time: GoTime::now(),
            tree,
            paths: vec!["/crafted".into()],
            hostname: "compromised".into(),
            ..Default::default()
        };
        self.repo
            .save_unpacked(fleetsnap::backend::FileType::Snapshot, &snap)
            .unwrap()
    }

    fn tree_of(&self, snap: &Id) -> Id {
        let (_, s) = self
            .repo
            .find_snapshot(&snap.to_hex(), &Default::default())
            .unwrap();
        s.tree
    }

    /// Library restore; a refused tree is an `Err`, refused entries are `errors`.
    fn restore(&self, snap: &Id, target: &str) -> Result<RestoreStats, String> {
        let opts = RestoreOptions {
            target: self.path(target),
            include: PathMatcher::new(&[]).unwrap(),
            exclude: PathMatcher::new(&[]).unwrap(),
            verify: false,
        };
        restore(&self.repo, &self.tree_of(snap), &opts).map_err(|e| e.to_string())
    }

    fn cli_restore(&self, snap: &Id, target: &str) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_fleetsnap"))
            .arg("-r")
            .arg(self.path("repo"))
            .args(["restore", &snap.to_hex(), "--target"])
            .arg(self.path(target))
            .env("RESTIC_PASSWORD", PASSWORD)
            .output()
            .expect("spawn fleetsnap")
    }

    /// Everything in the lab except the repository and the restore targets, in a form
    /// where any write, chmod, chown, utimes, create or delete shows.
    fn outside_state(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for e in fs::read_dir(self.tmp.path()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n == "repo" || n.starts_with('t') || n.ends_with(".cache") {
                continue;
            }
            describe(&e.path(), &n, &mut out);
        }
        out
    }
}

fn describe(p: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
    let m = fs::symlink_metadata(p).unwrap();
    let mut d = format!(
        "mode={:o} uid={} gid={} mtime={}.{}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec()
    );
    if m.file_type().is_symlink() {
        d += &format!(" -> {}", fs::read_link(p).unwrap().display());
    } else if m.is_file() {
        d += &format!(
            " size={} sha={}",
            m.len(),
            Id::hash(&fs::read(p).unwrap()).short()
        );
    }
    out.insert(rel.to_string(), d);
    if m.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            describe(&e.path(), &child, out);
        }
    }
}

/// Fail with the exact differences, so the output shows what was written through a link.
fn assert_untouched(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    what: &str,
) {
    let mut diff = Vec::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push(format!("  removed  {k} ({v})")),
            Some(w) if w != v => diff.push(format!("  changed  {k}: {v}  =>  {w}")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diff.push(format!("  created  {k} ({v})"));
        }
    }
    assert!(
        diff.is_empty(),
        "{what}: the restore wrote OUTSIDE its target:\n{}",
        diff.join("\n")
    );
}

/// Snapshot A: symlinks (relative and absolute) where snapshot B has directories and files.
fn links_then_dirs(lab: &mut Lab) -> (Id, Id) {
    let abs_dir = lab.outside_abs("");
    let abs_ssh = lab.outside_abs(".ssh");
    let abs_victim = lab.outside_abs("victim.txt");
    let mut c = Craft::default();
    let inner = vec![Craft::symlink(b"up", b"../../outside")];
    let nested = c.dir(b"nested", inner);
    let a = lab.snapshot(
        c,
        vec![
            Craft::symlink(b"abs", &abs_dir),
            nested,
            Craft::symlink(b"ssh", &abs_ssh),
            Craft::symlink(b"victim", &abs_victim),
            Craft::symlink(b"x", b"../outside"),
            Craft::symlink(b"y", b"../outside/victim.txt"),
        ],
    );
    let mut c = Craft::default();
    let abs = vec![c.file(b"victim.txt", b"pwned via abs\n")];
    let abs = c.dir(b"abs", abs);
    let up = vec![c.file(b"x", b"pwned via nested/up\n")];
    let up = c.dir(b"up", up);
    let nested = c.dir(b"nested", vec![up]);
    let ssh = vec![c.file(b"authorized_keys", b"ssh-ed25519 EVIL attacker\n")];
    let ssh = c.dir(b"ssh", ssh);
    let victim = c.file(b"victim", b"pwned via absolute file link\n");
    let sub = vec![c.file(b"f", b"pwned deep\n")];
    let sub = c.dir(b"sub", sub);
    let d = c.dir(b"d", vec![sub]);
    let xv = c.file(b"victim.txt", b"pwned via x\n");
    let x = c.dir(b"x", vec![d, xv]);
    let y = c.file(b"y", b"pwned via relative file link\n");
    let b = lab.snapshot(c, vec![abs, nested, ssh, victim, x, y]);
    (a, b)
}

#[test]
fn symlink_then_dir_restored_into_one_target_stays_inside() {
    let mut lab = Lab::new();
    let (a, b) = links_then_dirs(&mut lab);
    let before = lab.outside_state();
    for (i, snap) in [a, b, a, b, b, a].iter().enumerate() {
        let r = lab.restore(snap, "t");
        assert_untouched(
            &before,
            &lab.outside_state(),
            &format!("restore #{i} ({r:?})"),
        );
        let st = r.unwrap_or_else(|e| panic!("restore #{i}: {e}"));
        // Snapshot A over B puts symlinks where non-empty directories are: those entries
        // are refused (restic does the same without `--delete`), everything else restored.
        let a_over_b = i > 0 && *snap == a;
        if a_over_b {
            assert_eq!(st.errors.len(), 4, "restore #{i}: {:?}", st.errors);
            for e in &st.errors {
                assert!(e.contains("non-empty directory is in the way"), "{e}");
            }
        } else {
            assert!(st.errors.is_empty(), "restore #{i}: {:?}", st.errors);
        }
    }
    // B's types win over A's, inside the target; A's file links were replaced by its dirs.
    let t = lab.path("t");
    lab.restore(&a, "t-fresh").unwrap();
    assert!(
        fs::symlink_metadata(lab.path("t-fresh/x"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    lab.restore(&b, "t").unwrap();
    for d in ["x", "x/d/sub", "ssh", "abs", "nested/up"] {
        assert!(fs::symlink_metadata(t.join(d)).unwrap().is_dir(), "{d}");
    }
    for (f, want) in [
        ("x/victim.txt", &b"pwned via x\n"[..]),
        ("ssh/authorized_keys", b"ssh-ed25519 EVIL attacker\n"),
        ("y", b"pwned via relative file link\n"),
        ("victim", b"pwned via absolute file link\n"),
    ] {
        assert!(fs::symlink_metadata(t.join(f)).unwrap().is_file(), "{f}");
        assert_eq!(fs::read(t.join(f)).unwrap(), want, "{f}");
    }
}

/// Trees with two entries of one name, in both orders, at the top and below.
fn duplicates(lab: &mut Lab) -> Vec<(&'static str, Id)> {
    let abs_victim = lab.outside_abs("victim.txt");
    let abs_dir = lab.outside_abs("");
    let mut out = Vec::new();

    let mut c = Craft::default();
    let keys = vec![c.file(b"authorized_keys", b"ssh-ed25519 EVIL dup\n")];
    let x = c.dir(b"x", keys);
    let root = vec![Craft::symlink(b"x", b"../outside/.ssh"), x];
    out.push(("symlink x, dir x", lab.snapshot(c, root)));

    let mut c = Craft::default();
    let y = c.file(b"y", b"pwned content through a later symlink\n");
    let root = vec![y, Craft::symlink(b"y", &abs_victim)];
    out.push(("file y, symlink y", lab.snapshot(c, root)));

    let mut c = Craft::default();
    let y = c.file(b"y", b"pwned\n");
    let root = vec![Craft::symlink(b"y", b"../outside/victim.txt"), y];
    out.push(("symlink y, file y", lab.snapshot(c, root)));

    let mut c = Craft::default();
    let f = c.file(b"victim.txt", b"pwned below\n");
    let inner = vec![Craft::symlink(b"d", &abs_dir), c.dir(b"d", vec![f])];
    let root = vec![c.dir(b"sub", inner)];
    out.push(("sub/{symlink d, dir d}", lab.snapshot(c, root)));

    // The hardlink's first copy is replaced by a symlink before the second copy is linked.
    let mut c = Craft::default();
    let first = c.hardlink(b"h", b"hard\n", 77, 2);
    let second = c.hardlink(b"h2", b"hard\n", 77, 2);
    let root = vec![
        first,
        Craft::symlink(b"h", b"../outside/victim.txt"),
        second,
    ];
    out.push(("hardlink h, symlink h, hardlink h2", lab.snapshot(c, root)));
    out
}

#[test]
fn duplicate_names_are_refused_and_stay_inside() {
    let mut lab = Lab::new();
    let dups = duplicates(&mut lab);
    let before = lab.outside_state();
    for round in 0..2 {
        for (what, snap) in &dups {
            let r = lab.restore(snap, "t");
            assert_untouched(
                &before,
                &lab.outside_state(),
                &format!("{what}, round {round}: {r:?}"),
            );
            let refused = match &r {
                Err(e) => e.contains("duplicate"),
                Ok(st) => st.errors.iter().any(|e| e.contains("duplicate")),
            };
            assert!(refused, "{what}: duplicate names not reported: {r:?}");
        }
    }
}

#[test]
fn tree_parse_refuses_duplicate_names() {
    let mut c = Craft::default();
    let y = c.file(b"y", b"1");
    c.tree(vec![y.clone(), Craft::symlink(b"y", b"/etc/shadow")]);
    let (_, _, json) = c.blobs.pop().unwrap();
    let err = Tree::parse(&json).expect_err("a tree with two entries named y parsed");
    assert!(err.to_string().contains("\"y\""), "{err}");
    // Unsorted input must not hide a duplicate from the check.
    let mut c = Craft::default();
    let z = c.file(b"z", b"1");
    c.tree(vec![y.clone(), z, y]);
    let (_, _, json) = c.blobs.pop().unwrap();
    assert!(Tree::parse(&json).is_err());
}

#[test]
fn escaping_names_are_refused_and_reported() {
    let mut lab = Lab::new();
    let abs = lab.outside_abs("abs-evil");
    let mut c = Craft::default();
    let mut root = vec![
        c.file(b"", b"empty name\n"),
        c.file(b".", b"dot\n"),
        c.file(b"..", b"dotdot\n"),
        c.file(b"../outside/victim.txt", b"pwned via ..\n"),
        c.file(b"a/b", b"slash\n"),
        c.file(&abs, b"pwned via absolute name\n"),
        Craft::symlink(b"../outside/evil-link", b"/etc/shadow"),
    ];
    // A directory named `..` one level down (the file `..` above is its own entry).
    let below = vec![c.file(b"victim.txt", b"pwned via dir ..\n")];
    let dotdot = c.dir(b"..", below);
    root.push(c.dir(b"s", vec![dotdot]));
    let below = vec![c.file(b"x", b"pwned via dir /\n")];
    root.push(c.dir(&lab.outside_abs(""), below));
    root.push(c.file(b"ok", b"fine\n"));
    let snap = lab.snapshot(c, root);
    let before = lab.outside_state();
    for round in 0..2 {
        let r = lab.restore(&snap, "t");
        assert_untouched(&before, &lab.outside_state(), &format!("round {round}"));
        let st = r.unwrap();
        let unsafe_names = st
            .errors
            .iter()
            .filter(|e| e.contains("unsafe file name"))
            .count();
        assert_eq!(unsafe_names, 9, "{:?}", st.errors);
        assert_eq!(fs::read(lab.path("t/ok")).unwrap(), b"fine\n");
    }
    let out = lab.cli_restore(&snap, "t-cli");
    assert!(!out.status.success(), "CLI exit 0 despite refused names");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing unsafe file name \"..\""), "{err}");
    assert_untouched(&before, &lab.outside_state(), "CLI");
}

#[test]
fn hardlinks_cannot_reach_outside() {
    let mut lab = Lab::new();
    let abs_victim = lab.outside_abs("victim.txt");
    // First restore: symlinks where the second snapshot's hardlink group lives.
    let mut c = Craft::default();
    let d = c.dir(b"d", vec![Craft::symlink(b"h", &abs_victim)]);
    let links = lab.snapshot(
        c,
        vec![
            d,
            Craft::symlink(b"h1", b"../outside/victim.txt"),
            Craft::symlink(b"h2", &abs_victim),
        ],
    );
    let mut c = Craft::default();
    // The group's first copy is a symlink node claiming the same inode: it must not become
    // the source that later files are linked to.
    let mut first = Craft::symlink(b"a", &abs_victim);
    first.inode = 9;
    first.device_id = 1;
    first.links = 4;
    let h = c.hardlink(b"h", b"group\n", 9, 4);
    let d = c.dir(b"d", vec![h]);
    let root = vec![
        first,
        d,
        c.hardlink(b"h1", b"group\n", 9, 4),
        c.hardlink(b"h2", b"group\n", 9, 4),
    ];
    let group = lab.snapshot(c, root);
    let before = lab.outside_state();
    for (i, snap) in [links, group, links, group].iter().enumerate() {
        let r = lab.restore(snap, "t");
        assert_untouched(&before, &lab.outside_state(), &format!("#{i}: {r:?}"));
        let st = r.unwrap();
        assert!(st.errors.is_empty(), "#{i}: {:?}", st.errors);
    }
    let t = lab.path("t");
    let ino = fs::symlink_metadata(t.join("d/h")).unwrap().ino();
    for f in ["d/h", "h1", "h2"] {
        let m = fs::symlink_metadata(t.join(f)).unwrap();
        assert!(m.is_file(), "{f}");
        assert_eq!(m.ino(), ino, "{f} is not linked to the group's first file");
        assert_eq!(fs::read(t.join(f)).unwrap(), b"group\n");
    }
    assert!(
        fs::symlink_metadata(t.join("a"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn cli_restore_stays_inside_and_reports_refusals() {
    let mut lab = Lab::new();
    let (a, b) = links_then_dirs(&mut lab);
    let dups = duplicates(&mut lab);
    let before = lab.outside_state();
    for (i, snap) in [a, b, a, b].iter().enumerate() {
        let out = lab.cli_restore(snap, "t");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_untouched(&before, &lab.outside_state(), &format!("CLI #{i}: {err}"));
        // #2 puts A's symlinks where B's non-empty directories are: refused, reported.
        assert_eq!(out.status.success(), i != 2, "CLI #{i}: {err}");
        if i == 2 {
            assert!(err.contains("non-empty directory is in the way"), "{err}");
        }
    }
    for (what, snap) in &dups {
        let out = lab.cli_restore(snap, "t");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_untouched(&before, &lab.outside_state(), &format!("CLI {what}: {err}"));
        assert!(!out.status.success(), "CLI {what}: exit 0; stderr: {err}");
        assert!(err.contains("duplicate"), "CLI {what}: {err}");
    }
}

fn restic_newest() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("FLEETSNAP_RESTIC")
            .unwrap_or_else(|_| "/var/cache/fleetsnap/tools/restic-v0.19.1/restic".into()),
    );
    assert!(
        p.is_file(),
        "restic 0.19.1 not found at {} (build it with tests/testenv/tools.sh restic, or set \
         FLEETSNAP_RESTIC)",
        p.display()
    );
    p
}

/// The differential: restic restores the same two snapshots into one target, stays inside,
/// and ends with the same types as fleetsnap.
#[test]
fn restic_on_the_same_snapshots_stays_inside_like_fleetsnap() {
    let restic = restic_newest();
    let mut lab = Lab::new();
    let (a, b) = links_then_dirs(&mut lab);
    let before = lab.outside_state();
    // The third restore puts symlinks where non-empty directories now are: restic (without
    // `--delete`) refuses those entries and exits non-zero, and so does fleetsnap.
    for (i, snap) in [a, b, a, b].iter().enumerate() {
        let out = Command::new(&restic)
            .arg("-r")
            .arg(lab.path("repo"))
            .args(["restore", &snap.to_hex(), "--target"])
            .arg(lab.path("t-restic"))
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("RESTIC_CACHE_DIR", lab.path("restic.cache"))
            .output()
            .expect("spawn restic");
        let restic_err = String::from_utf8_lossy(&out.stderr);
        assert_untouched(&before, &lab.outside_state(), "restic");
        let st = lab.restore(snap, "t").unwrap();
        assert_untouched(&before, &lab.outside_state(), "fleetsnap");
        assert_eq!(
            out.status.success(),
            st.errors.is_empty(),
            "#{i}: restic: {restic_err}\nfleetsnap: {:?}",
            st.errors
        );
        assert_eq!(
            kinds(&lab.path("t")),
            kinds(&lab.path("t-restic")),
            "#{i}: restic: {restic_err}\nfleetsnap: {:?}",
            st.errors
        );
    }
    assert_eq!(kinds(&lab.path("t")), kinds(&lab.path("t-restic")));
}

/// Relative path -> file type, for comparing what two restorers left.
fn kinds(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let t = fs::symlink_metadata(&p).unwrap().file_type();
            if t.is_dir() {
                todo.push(p.clone());
            }
            let kind = if t.is_symlink() {
                format!("symlink -> {}", fs::read_link(&p).unwrap().display())
            } else {
                format!("{t:?}")
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), kind);
        }
    }
    out
}

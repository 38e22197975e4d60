#![allow(clippy::unwrap_used)]
//! `node::branch` against stock git-annex: what annexmesh commits to the
//! `git-annex` branch is what git-annex reads, and the other way round.
//!
//! The real git-annex is found at `ANNEXMESH_GIT_ANNEX_BIN` or in
//! `<workspace>/.cache/annex-bin` (`scripts/test` sets it up). Without it these
//! tests fail: they never skip.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node::Store;
use node::branch;
use protocol::Key;
use protocol::logs::catalog::Catalog;
use protocol::logs::presence::{self, Status};
use protocol::logs::uuid_based;
use protocol::server::Validity;
use protocol::verify::Hash;

// ---------------------------------------------------------------------------
// Finding and running git-annex.

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn git_annex_bin_dir() -> PathBuf {
    let dir = std::env::var_os("ANNEXMESH_GIT_ANNEX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/annex-bin"));
    assert!(
        dir.join("git-annex").exists(),
        "stock git-annex not found at {}: run scripts/test (or scripts/setup-git-annex) first, \
         or set ANNEXMESH_GIT_ANNEX_BIN",
        dir.join("git-annex").display()
    );
    dir
}

/// A sandbox: a temp dir with a HOME for git and git-annex.
struct Sandbox {
    tmp: tempfile::TempDir,
    path_env: std::ffi::OsString,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("home")).unwrap();
        let mut parts = vec![git_annex_bin_dir()];
        if let Some(old) = std::env::var_os("PATH") {
            parts.extend(std::env::split_paths(&old));
        }
        Sandbox {
            tmp,
            path_env: std::env::join_paths(parts).unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn cmd(&self, cwd: &Path, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .env("PATH", &self.path_env)
            .env("HOME", self.path("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "annexmesh test")
            .env("GIT_AUTHOR_EMAIL", "test@annexmesh.invalid")
            .env("GIT_COMMITTER_NAME", "annexmesh test")
            .env("GIT_COMMITTER_EMAIL", "test@annexmesh.invalid")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_ANNEX_VECTOR_CLOCK");
        cmd
    }

    /// Runs `git args…` in `cwd`; panics with its output if it fails.
    fn git(&self, cwd: &Path, args: &[&str]) -> String {
        let out = run(&mut self.cmd(cwd, "git", args));
        assert!(
            out.ok,
            "git {args:?} in {} failed:\n{}",
            cwd.display(),
            out.all
        );
        out.stdout
    }

    /// Runs `git annex args…` in `cwd`; panics with its output if it fails.
    fn annex(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut full = vec!["annex"];
        full.extend_from_slice(args);
        let out = run(&mut self.cmd(cwd, "git", &full));
        assert!(
            out.ok,
            "git annex {args:?} in {} failed:\n{}",
            cwd.display(),
            out.all
        );
        out
    }
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
    all: String,
}

/// Runs a command with a time limit (a hang fails the test instead of
/// blocking the run).
fn run(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} took more than 300 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    Output {
        ok: status.success(),
        all: format!("status {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        stdout,
        stderr,
    }
}

// ---------------------------------------------------------------------------
// annexmesh side.

fn key_of(data: &[u8]) -> Key {
    let mut h = Hash::Sha256.hasher();
    h.update(data);
    Key::from_hash("SHA256E", data.len() as u64, &h.finish_hex(), ".bin").unwrap()
}

/// A new annexmesh bare repository and its store.
fn mesh(dir: &Path, description: &str, seed: u8) -> Store {
    let init = node::init::init(dir, description, [seed; 16]).unwrap();
    assert!(init.created);
    Store::new(init.repo)
}

/// Stores `data` through an upload, as a PUT does.
fn put(store: &Store, data: &[u8]) -> Key {
    let key = key_of(data);
    let mut upload = store.begin_upload(&key, 0).unwrap();
    upload.write(data).unwrap();
    assert_eq!(
        store.commit(upload, Validity::Valid).unwrap(),
        node::store::Stored::Stored
    );
    key
}

fn git_dir(store: &Store) -> PathBuf {
    store.repo().git_dir.clone()
}

fn journal_files(store: &Store) -> Vec<String> {
    match std::fs::read_dir(git_dir(store).join("annex/journal")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn commit_count(sb: &Sandbox, git_dir: &Path) -> usize {
    sb.git(git_dir, &["rev-list", "--count", "refs/heads/git-annex"])
        .trim()
        .parse()
        .unwrap()
}

/// `git fsck --strict` passes without a complaint (git's notice about the
/// unborn HEAD of a bare repository aside).
fn git_fsck(sb: &Sandbox, git_dir: &Path) {
    let fsck = run(&mut sb.cmd(git_dir, "git", &["fsck", "--strict", "--no-dangling"]));
    assert!(fsck.ok, "{}", fsck.all);
    let complaints: Vec<&str> = fsck
        .stderr
        .lines()
        .filter(|l| !l.starts_with("notice:") && !l.starts_with("Checking"))
        .collect();
    assert!(complaints.is_empty(), "{}", fsck.all);
    assert!(fsck.stdout.trim().is_empty(), "{}", fsck.all);
}

/// Every (path, line) of a catalog.
fn lines_of(c: &Catalog) -> BTreeSet<(String, String)> {
    c.files()
        .flat_map(|(p, f)| f.lines().map(move |l| (p.to_owned(), l.into_owned())))
        .collect()
}

fn field(c: &Catalog, path: &str, field: &str) -> String {
    c.file(path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .get(field)
        .unwrap_or_else(|| panic!("{path} has no line for {field}"))
        .into_owned()
}

/// Clones `bare` to `dir` and runs `git annex init` there; returns its uuid.
fn clone_with_git_annex(sb: &Sandbox, bare: &Path, dir: &Path, description: &str) -> String {
    sb.git(
        sb.tmp.path(),
        &["clone", "-q", bare.to_str().unwrap(), dir.to_str().unwrap()],
    );
    sb.annex(dir, &["init", description]);
    sb.git(dir, &["config", "annex.uuid"]).trim().to_owned()
}

// ---------------------------------------------------------------------------

/// (a) A PUT into an annexmesh bare repository, committed by `branch::commit`,
/// is seen by a stock git-annex clone: `whereis` and `info` name the
/// annexmesh repository; after `git fetch` a later commit is merged too.
#[test]
fn stock_git_annex_sees_what_annexmesh_commits() {
    let sb = Sandbox::new();
    let bare = sb.path("mesh.git");
    let store = mesh(&bare, "annexmesh bare", 1);
    let uuid = store.uuid().to_string();
    let k1 = put(&store, b"hello from annexmesh\n");
    assert!(!journal_files(&store).is_empty(), "init and PUT journal");

    let id = branch::commit(&git_dir(&store), "annexmesh: update").unwrap();
    let id = id.expect("something to commit");
    assert_eq!(branch::head(&git_dir(&store)).unwrap(), Some(id));
    assert!(
        journal_files(&store).is_empty(),
        "committed journal files are removed"
    );
    assert_eq!(branch::commit(&git_dir(&store), "again").unwrap(), None);
    assert_eq!(commit_count(&sb, &bare), 1);
    let log = sb.git(&bare, &["log", "-1", "--format=%an <%ae>%n%s", "git-annex"]);
    assert_eq!(log, "annexmesh <annexmesh@localhost>\nannexmesh: update\n");

    let clone = sb.path("clone");
    clone_with_git_annex(&sb, &bare, &clone, "stock clone");
    let whereis = sb.annex(&clone, &["whereis", "--key", k1.as_str()]).stdout;
    assert!(whereis.contains("(1 copy)"), "{whereis}");
    assert!(whereis.contains(&uuid), "{whereis}");
    assert!(whereis.contains("annexmesh bare"), "{whereis}");
    let info = sb.annex(&clone, &["info", "origin"]).stdout;
    assert!(info.contains(&uuid), "{info}");
    assert!(info.contains("annexmesh bare"), "{info}");

    // A later PUT: `git fetch` brings origin/git-annex, which git-annex merges.
    let k2 = put(&store, b"second upload\n");
    branch::commit(&git_dir(&store), "annexmesh: update")
        .unwrap()
        .unwrap();
    sb.git(&clone, &["fetch", "-q", "origin"]);
    let whereis = sb.annex(&clone, &["whereis", "--key", k2.as_str()]).stdout;
    assert!(whereis.contains(&uuid), "{whereis}");
    // And git-annex can fetch the content from the annexmesh store.
    sb.annex(&clone, &["get", "--key", k1.as_str()]);
    let whereis = sb.annex(&clone, &["whereis", "--key", k1.as_str()]).stdout;
    assert!(whereis.contains("(2 copies)"), "{whereis}");
}

/// (b) What stock git-annex writes (committed or still in its journal) is in
/// `branch::read`'s catalog.
#[test]
fn annexmesh_reads_what_stock_git_annex_writes() {
    let sb = Sandbox::new();
    let repo = sb.path("stock");
    std::fs::create_dir(&repo).unwrap();
    sb.git(&repo, &["init", "-q"]);
    sb.annex(&repo, &["init", "stock repo"]);
    let uuid = sb.git(&repo, &["config", "annex.uuid"]).trim().to_owned();
    std::fs::write(repo.join("file.bin"), b"annexed by git-annex\n").unwrap();
    sb.annex(&repo, &["add", "file.bin"]);
    sb.annex(&repo, &["describe", "here", "stock described"]);
    sb.annex(&repo, &["group", "here", "backup"]);
    sb.annex(&repo, &["wanted", "here", "include=*.bin"]);
    sb.annex(&repo, &["numcopies", "2"]);
    // Left in git-annex's journal, not committed:
    sb.git(
        &repo,
        &[
            "-c",
            "annex.alwayscommit=false",
            "annex",
            "schedule",
            "here",
            "fsck self 30m every day at any time",
        ],
    );
    assert!(repo.join(".git/annex/journal/schedule.log").exists());
    let key = sb.annex(&repo, &["lookupkey", "file.bin"]).stdout;
    let key = Key::parse(key.trim()).unwrap();

    let cat = branch::read(&repo.join(".git")).unwrap();
    assert!(field(&cat, "uuid.log", &uuid).contains(" stock described timestamp="));
    assert!(field(&cat, "group.log", &uuid).contains(" backup timestamp="));
    assert!(field(&cat, "preferred-content.log", &uuid).contains(" include=*.bin timestamp="));
    assert!(field(&cat, "numcopies.log", "").ends_with(" 2"));
    assert!(field(&cat, "schedule.log", &uuid).contains("fsck self 30m every day"));
    let loc = field(&cat, &presence::location_log_path(&key), &uuid);
    assert!(loc.contains(&format!(" 1 {uuid}")), "{loc}");

    // The branch alone (no journal) has all but the schedule.
    let head = sb.git(&repo, &["show", "git-annex:uuid.log"]);
    assert!(head.contains("stock described"));
}

/// (c) 5 000 location-log entries in the journal become exactly one commit,
/// which `git fsck --strict` accepts.
#[test]
fn five_thousand_journal_entries_make_one_commit() {
    let sb = Sandbox::new();
    let bare = sb.path("mesh.git");
    let store = mesh(&bare, "batch", 2);
    let gd = git_dir(&store);
    branch::commit(&gd, "init").unwrap().unwrap();
    assert_eq!(commit_count(&sb, &bare), 1);

    let start = Instant::now();
    let mut keys = Vec::new();
    for i in 0..5000u32 {
        let key = key_of(format!("content {i}").as_bytes());
        store
            .record_presence(&key, store.uuid(), Status::Present)
            .unwrap();
        keys.push(key);
    }
    let journalled = start.elapsed();
    assert_eq!(journal_files(&store).len(), 5000);

    let start = Instant::now();
    let id = branch::commit(&gd, "annexmesh: 5000 keys")
        .unwrap()
        .unwrap();
    let committed = start.elapsed();
    println!("5000 journal entries: journalled in {journalled:?}, committed in {committed:?}");

    assert_eq!(
        commit_count(&sb, &bare),
        2,
        "one commit for the whole batch"
    );
    assert!(journal_files(&store).is_empty());
    let parents = sb.git(&bare, &["rev-list", "--parents", "-n1", &id.to_string()]);
    assert_eq!(
        parents.split_whitespace().count(),
        2,
        "one parent: {parents}"
    );
    git_fsck(&sb, &bare);

    let files = sb.git(&bare, &["ls-tree", "-r", "--name-only", "git-annex"]);
    assert_eq!(files.lines().count(), 5001);
    let cat = branch::read(&gd).unwrap();
    let uuid = store.uuid().to_string();
    for key in &keys {
        let line = field(&cat, &presence::location_log_path(key), &uuid);
        assert!(line.ends_with(&format!(" 1 {uuid}")));
    }
    let one = sb.git(
        &bare,
        &[
            "show",
            &format!("git-annex:{}", presence::location_log_path(&keys[17])),
        ],
    );
    assert_eq!(one.lines().count(), 1);
    assert!(one.ends_with(&format!(" 1 {uuid}\n")));
}

/// 40 000 keys in one commit: seconds, not minutes (printed, not asserted),
/// and a small batch on top stays cheap.
#[test]
fn forty_thousand_keys_in_one_commit() {
    let sb = Sandbox::new();
    let bare = sb.path("mesh.git");
    let store = mesh(&bare, "big", 3);
    let gd = git_dir(&store);
    let uuid = store.uuid().to_string();
    let journal = gd.join("annex/journal");
    let mut paths = Vec::new();
    for i in 0..40_000u32 {
        let key = key_of(format!("big {i}").as_bytes());
        let path = presence::location_log_path(&key);
        std::fs::write(
            journal.join(node::journal::journal_name(&path)),
            format!("1700000000s 1 {uuid}\n"),
        )
        .unwrap();
        paths.push(path);
    }

    let start = Instant::now();
    branch::commit(&gd, "annexmesh: 40000 keys")
        .unwrap()
        .unwrap();
    let first = start.elapsed();
    assert_eq!(commit_count(&sb, &bare), 1);
    assert!(journal_files(&store).is_empty());

    let start = Instant::now();
    let cat = branch::read(&gd).unwrap();
    let read = start.elapsed();
    assert_eq!(cat.len(), 40_001);

    // 100 more keys and one changed file on top of the big tree.
    for i in 0..100u32 {
        let key = key_of(format!("more {i}").as_bytes());
        store
            .record_presence(&key, store.uuid(), Status::Present)
            .unwrap();
    }
    let drop_key = Key::parse(
        paths[0]
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".log"),
    )
    .unwrap();
    store
        .record_presence(&drop_key, store.uuid(), Status::Absent)
        .unwrap();
    let start = Instant::now();
    branch::commit(&gd, "annexmesh: 101 more").unwrap().unwrap();
    let small = start.elapsed();
    assert_eq!(commit_count(&sb, &bare), 2);
    let changed = sb.git(&bare, &["show", &format!("git-annex:{}", paths[0])]);
    assert!(changed.ends_with(&format!(" 0 {uuid}\n")), "{changed}");
    assert_eq!(changed.lines().count(), 1, "compacted: {changed}");

    println!(
        "40000 keys: one commit in {first:?}; read back in {read:?}; \
         101 more keys on top in {small:?}"
    );
    let start = Instant::now();
    git_fsck(&sb, &bare);
    println!("git fsck --strict of it: {:?}", start.elapsed());
}

/// (d) Concurrent edits on both sides, exchanged by fetching both ways: after
/// our read/commit and git-annex's merge, every line is on both sides, and
/// `git annex whereis` agrees.
#[test]
fn union_merge_loses_no_line_either_way() {
    let sb = Sandbox::new();
    let bare = sb.path("mesh.git");
    let store = mesh(&bare, "mesh B", 4);
    let gd = git_dir(&store);
    let uuid_b = store.uuid().to_string();
    let k1 = put(&store, b"shared key\n");
    branch::commit(&gd, "annexmesh: update").unwrap().unwrap();
    let clone = sb.path("clone");
    let uuid_c = clone_with_git_annex(&sb, &bare, &clone, "clone C");

    // Ours, in the journal: a new key, a changed description, a group, and
    // K1's location log gains a third repository.
    let uuid_x = protocol::Uuid::new_v4([44; 16]).to_string();
    let k2 = put(&store, b"only on B\n");
    let now = node::journal::log_clock_now();
    let j = store.journal();
    j.modify("uuid.log", |old| {
        let old = uuid_based::record(old, &uuid_b, "mesh B renamed", now);
        uuid_based::record(&old, &uuid_x, "phantom", now)
    })
    .unwrap();
    j.modify("group.log", |old| {
        uuid_based::record(old, &uuid_b, "mesh", now)
    })
    .unwrap();
    store
        .record_presence(
            &k1,
            &protocol::Uuid::parse(&uuid_x).unwrap(),
            Status::Present,
        )
        .unwrap();
    let ours = branch::read(&gd).unwrap();
    branch::commit(&gd, "annexmesh: ours").unwrap().unwrap();

    // Theirs, by git-annex in the clone (same files: uuid.log, group.log, K1).
    sb.annex(&clone, &["describe", "here", "clone C renamed"]);
    sb.annex(&clone, &["group", "here", "client"]);
    sb.annex(&clone, &["get", "--key", k1.as_str()]);
    std::fs::write(clone.join("theirs.bin"), b"only on C\n").unwrap();
    sb.annex(&clone, &["add", "theirs.bin"]);
    let k3 = Key::parse(sb.annex(&clone, &["lookupkey", "theirs.bin"]).stdout.trim()).unwrap();
    let theirs = branch::read(&clone.join(".git")).unwrap();

    let mut expected = ours.clone();
    expected.merge(&theirs);
    let expected = lines_of(&expected);
    for (path, line) in [
        ("uuid.log", &uuid_b),
        ("uuid.log", &uuid_c),
        ("uuid.log", &uuid_x),
        ("group.log", &uuid_b),
        ("group.log", &uuid_c),
    ] {
        assert!(
            expected
                .iter()
                .any(|(p, l)| p == path && l.starts_with(line.as_str()))
        );
    }

    // Fetch both ways (neither side has merged the other yet).
    sb.git(
        &bare,
        &[
            "fetch",
            "-q",
            clone.to_str().unwrap(),
            "+refs/heads/git-annex:refs/remotes/c/git-annex",
        ],
    );
    sb.git(&clone, &["fetch", "-q", "origin"]);

    // Our side: read sees the union before anything is committed...
    let before = lines_of(&branch::read(&gd).unwrap());
    let missing: Vec<_> = expected.difference(&before).collect();
    assert!(missing.is_empty(), "read lost {missing:?}");
    // ...and a commit (with a new PUT in the journal) merges C's branch.
    let k4 = put(&store, b"after the exchange\n");
    let merge = branch::commit(&gd, "annexmesh: merge").unwrap().unwrap();
    let parents = sb.git(&bare, &["rev-list", "--parents", "-n1", &merge.to_string()]);
    let c_head = sb.git(&bare, &["rev-parse", "refs/remotes/c/git-annex"]);
    assert_eq!(parents.split_whitespace().count(), 3, "{parents}");
    assert!(
        parents.contains(c_head.trim()),
        "C's head is a parent: {parents}"
    );
    let after_b = lines_of(&branch::read(&gd).unwrap());
    let missing: Vec<_> = expected.difference(&after_b).collect();
    assert!(missing.is_empty(), "our commit lost {missing:?}");
    // What the branch itself holds (no journal left).
    assert!(journal_files(&store).is_empty());
    for (path, line) in &expected {
        let content = sb.git(&bare, &["show", &format!("git-annex:{path}")]);
        assert!(
            content.lines().any(|l| l == line),
            "{path}: {line} not in\n{content}"
        );
    }

    // Their side: git annex merge, then every line is there too.
    sb.annex(&clone, &["merge"]);
    for (path, line) in &expected {
        let content = sb.git(&clone, &["show", &format!("git-annex:{path}")]);
        assert!(
            content.lines().any(|l| l == line),
            "{path}: {line} not in\n{content}"
        );
    }
    let whereis = sb.annex(&clone, &["whereis", "--key", k1.as_str()]).stdout;
    assert!(whereis.contains("(3 copies)"), "{whereis}");
    for u in [&uuid_b, &uuid_c, &uuid_x] {
        assert!(whereis.contains(u.as_str()), "{u} missing from {whereis}");
    }
    assert!(
        whereis.contains("mesh B renamed") && whereis.contains("phantom"),
        "{whereis}"
    );
    let whereis = sb.annex(&clone, &["whereis", "--key", k2.as_str()]).stdout;
    assert!(
        whereis.contains(&uuid_b) && whereis.contains("(1 copy)"),
        "{whereis}"
    );

    // Final exchange: both sides converge on the same catalog, and git-annex's
    // view (whereis) agrees with ours.
    sb.git(&clone, &["fetch", "-q", "origin"]);
    sb.annex(&clone, &["merge"]);
    let whereis = sb.annex(&clone, &["whereis", "--key", k4.as_str()]).stdout;
    assert!(whereis.contains(&uuid_b), "{whereis}");
    sb.git(
        &bare,
        &[
            "fetch",
            "-q",
            clone.to_str().unwrap(),
            "+refs/heads/git-annex:refs/remotes/c/git-annex",
        ],
    );
    // C's branch now contains ours: a fast-forward, no new merge commit.
    let ff = branch::commit(&gd, "annexmesh: merge").unwrap().unwrap();
    assert_eq!(
        ff.to_string(),
        sb.git(&clone, &["rev-parse", "git-annex"]).trim()
    );
    let final_b = branch::read(&gd).unwrap();
    let final_c = branch::read(&clone.join(".git")).unwrap();
    assert_eq!(lines_of(&final_b), lines_of(&final_c));
    for key in [&k1, &k2, &k3, &k4] {
        let path = presence::location_log_path(key);
        let present: BTreeSet<String> = presence::present(&final_b.file(&path).unwrap().content())
            .into_iter()
            .collect();
        let whereis = sb.annex(&clone, &["whereis", "--key", key.as_str()]).stdout;
        for u in [&uuid_b, &uuid_c, &uuid_x] {
            assert_eq!(
                whereis.contains(u.as_str()),
                present.contains(u.as_str()),
                "{key}: {u}: ours {present:?}, whereis:\n{whereis}"
            );
        }
    }
}

/// (e) Our commits pass `git fsck --strict`; `git annex fsck --fast` is happy
/// with the branch, in a clone and in the annexmesh repository itself, also
/// when we commit again after git-annex has built its own branch index there.
#[test]
fn commits_pass_git_fsck_and_git_annex_fsck() {
    let sb = Sandbox::new();
    let bare = sb.path("mesh.git");
    let store = mesh(&bare, "fsck me", 5);
    let gd = git_dir(&store);
    let uuid = store.uuid().to_string();
    let k1 = put(&store, b"one\n");
    branch::commit(&gd, "annexmesh: update").unwrap().unwrap();
    let k2 = put(&store, b"two\n");
    branch::commit(&gd, "annexmesh: update").unwrap().unwrap();
    // Gossip-style lines for another repository.
    let other = protocol::Uuid::new_v4([55; 16]).to_string();
    branch::commit_catalog_files(
        &gd,
        &[
            (
                "uuid.log".into(),
                format!("{other} gossiped timestamp=1700000000s\n").into_bytes(),
            ),
            ("../escape".into(), b"x\n".to_vec()),
        ],
        "annexmesh: gossip",
    )
    .unwrap()
    .unwrap();
    assert_eq!(commit_count(&sb, &bare), 3);
    let uuid_log = sb.git(&bare, &["show", "git-annex:uuid.log"]);
    assert!(
        uuid_log.contains("fsck me") && uuid_log.contains("gossiped"),
        "{uuid_log}"
    );

    git_fsck(&sb, &bare);

    let clean = |out: &Output| {
        let text = out.all.to_lowercase();
        for bad in [
            "fail",
            "warning",
            "error",
            "fixing",
            "not present",
            "branch",
        ] {
            assert!(
                !text.contains(bad),
                "git-annex complained ({bad}):\n{}",
                out.all
            );
        }
    };

    // A stock clone: fsck its copy, and fsck what it believes origin has.
    let clone = sb.path("clone");
    clone_with_git_annex(&sb, &bare, &clone, "clone");
    sb.annex(&clone, &["get", "--key", k1.as_str()]);
    clean(&sb.annex(&clone, &["fsck", "--fast", "--all"]));
    clean(&sb.annex(&clone, &["fsck", "--fast", "--all", "--from", "origin"]));

    // git-annex in the annexmesh repository itself.
    clean(&sb.annex(&bare, &["fsck", "--fast", "--all"]));
    let whereis = sb.annex(&bare, &["whereis", "--key", k2.as_str()]).stdout;
    assert!(whereis.contains(&uuid), "{whereis}");
    assert!(
        bare.join("annex/index").exists(),
        "git-annex built its branch index"
    );

    // We commit again on top of git-annex's index state; git-annex sees it.
    let k3 = put(&store, b"three\n");
    branch::commit(&gd, "annexmesh: update").unwrap().unwrap();
    let whereis = sb.annex(&bare, &["whereis", "--key", k3.as_str()]).stdout;
    assert!(whereis.contains(&uuid), "{whereis}");
    clean(&sb.annex(&bare, &["fsck", "--fast", "--all"]));
    // git-annex's own change (a description) is seen and kept by our next commit.
    sb.annex(&bare, &["describe", "here", "renamed by git-annex"]);
    let k4 = put(&store, b"four\n");
    branch::commit(&gd, "annexmesh: update").unwrap().unwrap();
    let cat = branch::read(&gd).unwrap();
    assert!(field(&cat, "uuid.log", &uuid).contains("renamed by git-annex"));
    let whereis = sb.annex(&bare, &["whereis", "--key", k4.as_str()]).stdout;
    assert!(whereis.contains("renamed by git-annex"), "{whereis}");
    git_fsck(&sb, &bare);
}

/// Journal writes from other threads while batches are committed are never
/// lost: a journal file rewritten after it was read is put back, not deleted.
#[test]
fn concurrent_journal_writes_survive_commits() {
    let sb = Sandbox::new();
    let bare = sb.path("mesh.git");
    let store = mesh(&bare, "busy", 6);
    let gd = git_dir(&store);
    let uuid = store.uuid().clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut keys = Vec::new();
            for i in 0..600u32 {
                let key = key_of(format!("busy {i}").as_bytes());
                store.record_presence(&key, &uuid, Status::Present).unwrap();
                // The same file, over and over: the likeliest to race.
                store
                    .journal()
                    .modify("group.log", |old| {
                        uuid_based::record(old, uuid.as_str(), &format!("g{i}"), 1_700_000_000)
                    })
                    .unwrap();
                keys.push(key);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            keys
        })
    };
    let mut commits = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        if branch::commit(&gd, "annexmesh: busy").unwrap().is_some() {
            commits += 1;
        }
    }
    let keys = writer.join().unwrap();
    branch::commit(&gd, "annexmesh: last").unwrap();
    assert!(journal_files(&store).is_empty());
    println!("{commits} commits while 1200 journal writes went on");
    let cat = branch::read(&gd).unwrap();
    for key in &keys {
        let line = field(
            &cat,
            &presence::location_log_path(key),
            store.uuid().as_str(),
        );
        assert!(line.contains(" 1 "), "{line}");
    }
    let group = field(&cat, "group.log", store.uuid().as_str());
    assert!(group.contains(" g599 timestamp="), "{group}");
    git_fsck(&sb, &bare);
}

#[test]
fn preferred_content_reads_only_the_keys_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let a = mesh(&tmp.path().join("a"), "a", 31);
    let k1 = put(&a, b"one");
    let k2 = put(&a, b"two");
    branch::commit(&git_dir(&a), "test").unwrap();
    let c = branch::read_for_keys(&git_dir(&a), &[&k1]).unwrap();
    assert!(c.file(&presence::location_log_path(&k1)).is_some());
    assert!(c.file(&presence::location_log_path(&k2)).is_none());
    assert!(c.file("uuid.log").is_some());
}

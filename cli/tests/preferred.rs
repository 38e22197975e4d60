//! Preferred content, differentially against STOCK git-annex: one real
//! git-annex repository with seven other repositories (directory special
//! remotes, so each has a uuid, a name and a `remote.log` config), files of
//! several sizes, names and backends, copies recorded with `git annex
//! setpresentkey`, metadata, groups, trust, numcopies, maxsize and
//! group-preferred content set with the real commands. Then, round after round, each
//! repository gets a preferred-content expression with `git annex wanted`
//! and, for every repository, the files `git annex find --want-get-by=REPO`
//! prints are compared with the files our evaluation
//! (`protocol::preferred`) wants, over the branch as `node::branch::read`
//! reads it. Nothing expected is written by hand: git-annex is the oracle.
//!
//! Run: `cargo test -p annexmesh-cli --test preferred`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::Key;
use protocol::logs::view::View;
use protocol::preferred::{Context, Facts};

struct Repo {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    top: PathBuf,
}

impl Repo {
    fn git_annex(&self, args: &[&str]) -> String {
        let mut cmd: Command = support::command_in("git", &self.top, &self.home);
        cmd.arg("annex").args(args);
        support::run_ok(&mut cmd)
    }

    fn git(&self, args: &[&str]) -> String {
        support::run_ok(support::command_in("git", &self.top, &self.home).args(args))
    }
}

/// Repositories (directory special remotes) and their setup.
const REPOS: [&str; 7] = ["r1", "r2", "r3", "r4", "r5", "r6", "r7"];

/// Files: path, size, backend (`None`: a URL key without a size).
const FILES: &[(&str, usize, Option<&str>)] = &[
    ("a.txt", 10, Some("SHA256E")),
    ("big.bin", 4000, Some("SHA256E")),
    ("archive/old.txt", 30, Some("SHA256E")),
    ("x/archive/y.dat", 60, Some("SHA256E")),
    ("public/p.txt", 20, Some("SHA256E")),
    ("pub/p2.txt", 25, Some("SHA256E")),
    ("a/pub/q.txt", 15, Some("SHA256E")),
    ("pub/sub/r.txt", 40, Some("SHA256E")),
    ("music/song.mp3", 500, Some("SHA256E")),
    ("music/other.mp3", 900, Some("SHA256E")),
    ("worm.dat", 70, Some("WORM")),
    ("sha1.dat", 80, Some("SHA1")),
    ("md5.dat", 90, Some("MD5E")),
    ("c/d/e.txt", 5, Some("SHA256E")),
    ("u.bin", 0, None),
];

/// Each round gives every repository of [`REPOS`] one expression; the
/// closure before it changes other settings first.
fn rounds() -> Vec<(Option<&'static str>, [&'static str; 7])> {
    vec![
        (None, ["standard"; 7]),
        (
            Some("groupwanted"),
            [
                "groupwanted",
                "groupwanted",
                "groupwanted",
                "groupwanted",
                "groupwanted",
                "present",
                "anything",
            ],
        ),
        (
            None,
            [
                "include=*.txt or include=*.mp3 and largerthan=100",
                "copies=2",
                "copies=archive:1",
                "copies=trusted:1",
                "copies=semitrusted+:2",
                "copies=untrusted:1",
                "lackingcopies=1",
            ],
        ),
        (
            None,
            [
                "approxlackingcopies=1",
                "inallgroup=nodes",
                "onlyingroup=nodes",
                "inbackend=WORM",
                "securehash",
                "smallerthan=50",
                "not largerthan=100",
            ],
        ),
        (
            None,
            [
                "inpreferreddir",
                "exclude=*/archive/* and exclude=archive/*",
                "present",
                "not present or anything",
                "metadata=author=*",
                "unused",
                "not (copies=2 or include=*.bin)",
            ],
        ),
        (
            None,
            [
                "anything or nothing and nothing",
                "nothing and nothing or anything",
                "balanced=nodes",
                "balanced=nodes",
                "balanced=nodes",
                "(include=*.txt",
                "include=*.txt not include=a* or smallerthan=20",
            ],
        ),
        (
            None,
            [
                "not not present",
                "inallgroup=nosuchgroup",
                "fullybalanced=nodes:2",
                "fullybalanced=nodes:2",
                "fullybalanced=nodes:2",
                "onlyingroup=nosuchgroup",
                "copies=nodes:1 and not copies=archive:1",
            ],
        ),
        (
            None,
            [
                "standard",
                "lackingcopies=2",
                "sizebalanced=nodes",
                "sizebalanced=nodes",
                "sizebalanced=nodes",
                "approxlackingcopies=2",
                "copies=dead:1 or copies=1",
            ],
        ),
        (
            Some("numcopies3"),
            [
                "lackingcopies=2",
                "standard",
                "fullysizebalanced=nodes:2",
                "fullysizebalanced=nodes:2",
                "fullysizebalanced=nodes:2",
                "standard",
                "standard",
            ],
        ),
        (
            None,
            [
                "inbackend=SHA256E and largerthan=20",
                "groupwanted",
                "balanced=nodes:lackingcopies",
                "balanced=nodes:lackingcopies",
                "balanced=nodes:lackingcopies",
                "include=pub/* or include=*/pub/*",
                "not securehash",
            ],
        ),
        (
            Some("required"),
            [
                "nothing",
                "include=music/*",
                "fullybalanced=nodes:lackingcopies",
                "fullybalanced=nodes:lackingcopies",
                "fullybalanced=nodes:lackingcopies",
                "standard",
                "include=c/*",
            ],
        ),
        (
            None,
            [
                "metadata=author=jo*",
                "metadata=Author=BOB",
                "metadata=year<2020",
                "metadata=year>=2019",
                "metadata=tag=foo",
                "metadata=title=hello*",
                "metadata=author",
            ],
        ),
        (
            None,
            [
                "metadata=year>2019.5",
                "metadata=year<=2019",
                "not metadata=author=*",
                "metadata=author>c",
                "metadata=year<x",
                "metadata=author=* or metadata=tag=*",
                "metadata=lastchanged<1",
            ],
        ),
        (Some("regroup"), ["standard"; 7]),
    ]
}

fn setup() -> (Repo, BTreeMap<String, String>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let top = tmp.path().join("repo");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&top).expect("repo");
    let repo = Repo {
        _tmp: tmp,
        home,
        top,
    };
    repo.git(&["init", "-q"]);
    repo.git_annex(&["init", "-q", "here"]);
    repo.git_annex(&["numcopies", "2"]);

    for (i, (path, size, backend)) in FILES.iter().enumerate() {
        let full = repo.top.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("dirs");
        match backend {
            Some(b) => {
                let body: Vec<u8> = (0..*size).map(|j| b'a' + ((i + j) % 26) as u8).collect();
                std::fs::write(&full, body).expect("write");
                repo.git_annex(&["add", "-q", "--backend", b, path]);
            }
            None => {
                repo.git_annex(&["fromkey", "--force", "URL--http://example.invalid/u", path]);
            }
        }
    }
    repo.git(&["commit", "-q", "-m", "files"]);

    let mut uuids = BTreeMap::new();
    for name in REPOS {
        let dir = repo
            .top
            .parent()
            .expect("tmp")
            .join(format!("store-{name}"));
        std::fs::create_dir_all(&dir).expect("store");
        let directory = format!("directory={}", dir.display());
        let mut args = vec![
            "initremote",
            "-q",
            name,
            "type=directory",
            directory.as_str(),
            "encryption=none",
        ];
        if name == "r6" {
            args.push("preferreddir=pub");
        }
        repo.git_annex(&args);
        let uuid = repo.git(&["config", &format!("remote.{name}.annex-uuid")]);
        uuids.insert(name.to_owned(), uuid.trim().to_owned());
    }

    for (name, groups) in [
        ("r1", "client"),
        ("r2", "archive"),
        ("r3", "backup nodes"),
        ("r4", "nodes"),
        ("r5", "nodes smallarchive"),
        ("r6", "public"),
        ("r7", "incrementalbackup"),
    ] {
        for g in groups.split(' ') {
            repo.git_annex(&["group", name, g]);
        }
    }
    repo.git_annex(&["trust", "--force", "r2"]);
    repo.git_annex(&["untrust", "r4"]);
    repo.git_annex(&["maxsize", "r3", "3000"]);
    repo.git_annex(&["maxsize", "r4", "8000"]);
    repo.git_annex(&["maxsize", "r5", "100000"]);

    // Copies: a fixed pattern over files × repositories, and some files
    // dropped here.
    let keys = files_and_keys(&repo);
    for (i, (_, key)) in keys.iter().enumerate() {
        for (j, name) in REPOS.iter().enumerate() {
            if (i * 5 + j * 3) % 7 < 3 {
                repo.git_annex(&["setpresentkey", key, &uuids[*name], "1"]);
            }
        }
    }
    for (i, (file, key)) in keys.iter().enumerate() {
        if i % 3 == 0 && !key.starts_with("URL-") {
            repo.git_annex(&["drop", "-q", "--force", file]);
        }
    }
    // Metadata, including a value with a space (base64 in the log) and a
    // value set then removed.
    for (file, args) in [
        ("a.txt", &["--set", "author=joey"][..]),
        (
            "big.bin",
            &["--set", "author=Bob", "--set", "year=2019"][..],
        ),
        ("music/song.mp3", &["--set", "year=2021"][..]),
        ("music/other.mp3", &["--set", "title=hello world"][..]),
        ("c/d/e.txt", &["--tag", "foo"][..]),
        ("u.bin", &["--set", "year=2000"][..]),
        ("worm.dat", &["--set", "author=joe"][..]),
        ("worm.dat", &["--remove", "author"][..]),
    ] {
        let mut a = vec!["metadata", "-q"];
        a.extend_from_slice(args);
        a.push(file);
        repo.git_annex(&a);
    }
    // r7 holds copies, then dies: its copies stop counting.
    repo.git_annex(&["dead", "--force", "r7"]);
    (repo, uuids)
}

/// Every annexed file and its key, as git-annex lists them.
fn files_and_keys(repo: &Repo) -> Vec<(String, String)> {
    repo.git_annex(&["find", "--anything", "--format=${file}\t${key}\n"])
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(f, k)| (f.to_owned(), k.to_owned()))
        .collect()
}

fn ours(git_dir: &Path, uuid: &str, files: &[(String, String)]) -> (BTreeSet<String>, String) {
    let catalog = node::branch::read(git_dir).expect("read the branch");
    let view = View::new(&catalog);
    let ctx = Context::from_view(&view);
    let expr = match ctx.expression(uuid) {
        Some(Ok(e)) => e,
        other => panic!("{uuid}: expression not parsed: {other:?}"),
    };
    let mut out = BTreeSet::new();
    for (file, key) in files {
        let key = Key::parse(key).expect("key");
        let locations: BTreeSet<String> = view.whereis(&key).copies.into_iter().collect();
        let metadata = view.metadata(&key);
        let facts = Facts {
            file: Some(file),
            key: &key,
            locations: &locations,
            metadata: Some(&metadata),
        };
        if expr.wants(&ctx, uuid, &facts) {
            out.insert(file.clone());
        }
    }
    (out, format!("{expr:?}"))
}

#[test]
fn find_want_get_by_agrees_with_our_evaluation() {
    let (repo, uuids) = setup();
    let files = files_and_keys(&repo);
    assert_eq!(files.len(), FILES.len(), "{files:?}");
    let git_dir = repo.top.join(".git");
    let mut mismatches = Vec::new();
    let mut compared = 0;
    let mut nonempty = 0;
    let mut partial = 0;
    for (round, (change, exprs)) in rounds().into_iter().enumerate() {
        match change {
            Some("groupwanted") => {
                repo.git_annex(&["groupwanted", "nodes", "balanced=nodes"]);
                repo.git_annex(&["groupwanted", "client", "include=*.txt or largerthan=100"]);
                repo.git_annex(&["groupwanted", "archive", "standard and not include=*.dat"]);
            }
            Some("numcopies3") => {
                repo.git_annex(&["numcopies", "3"]);
            }
            Some("required") => {
                repo.git_annex(&["required", "r1", "include=*.mp3"]);
                repo.git_annex(&["required", "r2", "include=a.txt"]);
            }
            Some("regroup") => {
                // r1 in two standard groups: `standard` falls back to
                // `present`; the other standard groups get their turn.
                repo.git_annex(&["group", "r1", "transfer"]);
                repo.git_annex(&["ungroup", "r5", "nodes"]);
                repo.git_annex(&["ungroup", "r3", "backup"]);
                repo.git_annex(&["group", "r3", "source"]);
                repo.git_annex(&["group", "r4", "manual"]);
                repo.git_annex(&["ungroup", "r7", "incrementalbackup"]);
                repo.git_annex(&["group", "r7", "unwanted"]);
                repo.git_annex(&["required", "r1", ""]);
                repo.git_annex(&["required", "r2", ""]);
            }
            _ => {}
        }
        for (name, expr) in REPOS.iter().zip(exprs) {
            repo.git_annex(&["wanted", name, expr]);
        }
        for (name, expr) in REPOS.iter().zip(exprs) {
            let uuid = &uuids[*name];
            let theirs: BTreeSet<String> = repo
                .git_annex(&[
                    "find",
                    &format!("--want-get-by={name}"),
                    "--format=${file}\n",
                ])
                .lines()
                .map(str::to_owned)
                .collect();
            let (mine, parsed) = ours(&git_dir, uuid, &files);
            compared += 1;
            if !theirs.is_empty() {
                nonempty += 1;
            }
            if !theirs.is_empty() && theirs.len() < files.len() {
                partial += 1;
            }
            if theirs != mine {
                mismatches.push(format!(
                    "round {round} {name} `{expr}` ({parsed}):\n  git-annex only: {:?}\n  ours only: {:?}",
                    theirs.difference(&mine).collect::<Vec<_>>(),
                    mine.difference(&theirs).collect::<Vec<_>>(),
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {compared} disagree:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The comparison means something: most answers are neither all nor none.
    assert!(
        nonempty > compared / 2,
        "{nonempty} of {compared} non-empty"
    );
    assert!(partial > compared / 3, "{partial} of {compared} partial");
}

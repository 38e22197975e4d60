//! The fault campaign (issue 11 item 5), real processes: a gateway G (our
//! binary as `git-annex-shell`, reached over fake-ssh), nodes N1, N2 (local,
//! written by the gateway) and N3 (behind the REAL git-annex-shell, a node
//! process of its own), and STOCK git-annex as the client C. Each round picks,
//! from a seed, an operation (PUT of a few MiB to the cluster: the fan-out;
//! GET from it; a local drop racing a drop from the cluster) and a victim
//! (the client git-annex, the gateway, the node's git-annex-shell) and
//! SIGKILLs the victim after a delay drawn from the seed (within the
//! operation's length as measured in earlier rounds), while the transfer
//! runs. Then it re-runs the operation, which must complete (and copies to
//! each node's own remote, resuming any node's cut part of the fan-out), and
//! checks:
//!
//! * every object file in every repository hashes to its key (no partial or
//!   corrupt object visible);
//! * `git annex fsck --fast` passes in every node and in C (location logs
//!   match the disks);
//! * nothing is left behind: no file in any `annex/tmp` (partials, the
//!   gateway's spool) and no process of the round still running;
//! * copies on disk never fall below numcopies (2) after the racing drops.
//!
//! The victims are found among the round's own processes (the descendants
//! of the client it started), by their command lines; only those are killed.
//!
//! `cargo test -p annexmesh-cli --test campaign` runs 6 rounds; the full
//! campaign is `scripts/campaign` (`ANNEXMESH_CAMPAIGN_ROUNDS`, default 100,
//! and `ANNEXMESH_CAMPAIGN_SEED`), which prints the figures.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(180);
const CLUSTER: &str = "mycluster";
const NUMCOPIES: usize = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    shim: PathBuf,
    log: PathBuf,
    g: PathBuf,
    c: PathBuf,
    nodes: Vec<PathBuf>,
}

impl Lab {
    fn new() -> Lab {
        support::git_annex_bin_dir();
        let tmp = tempfile::Builder::new()
            .prefix("campaign-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let home = root.join("home");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::write(
            home.join(".gitconfig"),
            "[init]\n\tdefaultBranch = master\n[annex]\n\tsshcaching = false\n",
        )
        .expect("gitconfig");
        let shim_dir = root.join("shim");
        std::fs::create_dir_all(&shim_dir).expect("shim dir");
        let shim = shim_dir.join("git-annex-shell");
        std::os::unix::fs::symlink(support::annexmesh_bin(), &shim).expect("shim");
        let log = root.join("fake-ssh.log");
        std::fs::write(&log, "").expect("log");
        let lab = Lab {
            g: root.join("G"),
            c: root.join("C"),
            nodes: (1..=3).map(|i| root.join(format!("N{i}"))).collect(),
            _tmp: tmp,
            root,
            home,
            shim,
            log,
        };
        for name in ["G", "N1", "N2", "N3"] {
            lab.ok(&lab.root, "git", &["init", "-q", name]);
            lab.ok(&lab.root.join(name), "git", &["annex", "init", name]);
        }
        let g = lab.g.clone();
        lab.ok(&g, "git", &["commit", "-q", "--allow-empty", "-m", "init"]);
        lab.ok(
            &g,
            support::annexmesh_bin().to_str().expect("utf-8"),
            &["initcluster", CLUSTER],
        );
        for i in 1..=3 {
            let name = format!("N{i}");
            lab.ok(&g, "git", &["remote", "add", &name, &format!("../{name}")]);
            lab.ok(
                &g,
                "git",
                &[
                    "config",
                    &format!("remote.{name}.annex-cluster-node"),
                    CLUSTER,
                ],
            );
        }
        // N3 behind the real git-annex-shell: a node process of its own.
        let real_shell = support::git_annex_bin_dir().join("git-annex-shell");
        lab.ok(
            &g,
            "git",
            &[
                "config",
                "remote.N3.annex-shell",
                real_shell.to_str().expect("utf-8"),
            ],
        );
        lab.ok(
            &g,
            support::annexmesh_bin().to_str().expect("utf-8"),
            &["updatecluster"],
        );
        lab.ok(&g, "git", &["annex", "wanted", ".", "nothing"]);
        let url = format!("localhost:{}", lab.g.display());
        lab.ok(&lab.root, "git", &["clone", "-q", "-o", "G", &url, "C"]);
        lab.ok(&lab.c, "git", &["annex", "init", "C"]);
        lab.ok(&lab.c, "git", &["fetch", "-q", "G"]);
        lab.ok(
            &lab.c,
            "git",
            &["annex", "numcopies", &NUMCOPIES.to_string()],
        );
        lab
    }

    fn command(&self, program: &str, dir: &Path) -> Command {
        let mut cmd = support::command_in(program, dir, &self.home);
        cmd.env("PATH", support::path_with_git_annex())
            .env("GIT_ANNEX_USE_GIT_SSH", "1")
            .env("GIT_SSH", support::tools_dir().join("fake-ssh"))
            .env("FAKE_SSH_LOG", &self.log)
            .env("FAKE_SSH_GIT_ANNEX_SHELL", &self.shim)
            .env_remove("FAKE_SSH_TAP_ONLY_P2P")
            .env_remove("GIT_SSH_COMMAND")
            .env_remove("ANNEXMESH_LOG");
        cmd
    }

    fn run(&self, dir: &Path, program: &str, args: &[&str]) -> support::Finished {
        let mut cmd = self.command(program, dir);
        cmd.args(args);
        support::run_with_timeout(&mut cmd, TIMEOUT)
    }

    fn ok(&self, dir: &Path, program: &str, args: &[&str]) -> String {
        let f = self.run(dir, program, args);
        assert!(
            f.status.success(),
            "(in {}) {program} {args:?} failed\n{}\n{}",
            dir.display(),
            f.stdout,
            f.stderr
        );
        f.stdout
    }

    fn annex_c(&self, args: &[&str]) -> support::Finished {
        let mut full = vec!["annex"];
        full.extend_from_slice(args);
        self.run(&self.c, "git", &full)
    }

    fn repos(&self) -> Vec<&PathBuf> {
        let mut v: Vec<&PathBuf> = self.nodes.iter().collect();
        v.push(&self.g);
        v.push(&self.c);
        v
    }

    /// Repositories (nodes and C) whose disk holds `key`.
    fn holders(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.nodes.iter().chain([&self.c]) {
            if object_files(r).iter().any(|(k, _)| k == key) {
                out.push(r.file_name().expect("name").to_string_lossy().into_owned());
            }
        }
        out
    }
}

/// Every object file under `repo`'s `annex/objects`: (key, path).
fn object_files(repo: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(".git/annex/objects")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let name = e.file_name().to_string_lossy().into_owned();
                let parent = p
                    .parent()
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned());
                // annex/objects/xx/yy/KEY/KEY: the content; anything else
                // (KEY.lck beside it, say) is not an object.
                if parent.as_deref() == Some(name.as_str()) {
                    out.push((name, p));
                }
            }
        }
    }
    out
}

/// Regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `SHA256E-s<size>--<hash>[.ext]`: (size, hash).
fn key_parts(key: &str) -> Option<(u64, String)> {
    let rest = key.strip_prefix("SHA256E-s")?;
    let (size, rest) = rest.split_once("--")?;
    let hash = rest.split('.').next()?;
    Some((size.parse().ok()?, hash.to_owned()))
}

/// Processes below `root` (by parent pid), with their command lines.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    let mut cmdline: BTreeMap<u32, String> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd: String = String::from_utf8_lossy(&cmd).replace('\0', " ");
        cmdline.insert(pid, cmd);
    }
    let mut out = Vec::new();
    for &pid in parent.keys() {
        let mut p = pid;
        let mut hops = 0;
        while let Some(&pp) = parent.get(&p) {
            if pp == root {
                out.push((pid, cmdline.get(&pid).cloned().unwrap_or_default()));
                break;
            }
            p = pp;
            hops += 1;
            if pp <= 1 || hops > 64 {
                break;
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Put,
    Get,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    Client,
    Gateway,
    Node,
}

/// Whether `cmd` (a command line) is the round's `victim`: the client's
/// git-annex, our binary run as the gateway's `git-annex-shell` (not the
/// fake-ssh tap or shell around it), or N3's real git-annex-shell.
fn is_victim(victim: Victim, cmd: &str, lab: &Lab) -> bool {
    let shim = format!("{} ", lab.shim.display());
    match victim {
        Victim::Client => cmd.contains("/git-annex ") && !cmd.contains("p2pstdio"),
        Victim::Gateway => cmd.starts_with(&shim) && cmd.contains("p2pstdio"),
        Victim::Node => {
            !cmd.starts_with(&shim)
                && cmd.contains("git-annex-shell p2pstdio")
                && cmd.contains("/N3 ")
        }
    }
}

#[derive(Default)]
struct Figures {
    rounds: usize,
    killed: BTreeMap<(Op, Victim), usize>,
    missed: BTreeMap<(Op, Victim), usize>,
    resumed: usize,
    objects_checked: usize,
    fscks: usize,
    min_copies_after_drop: Option<usize>,
}

/// Starts `args` in C; after `delay` kills the first process of the
/// round matching `victim`. Returns whether one was killed.
fn run_and_kill(lab: &Lab, args: &[&str], victim: Victim, delay: Duration) -> Killing {
    let mut cmd = lab.command("git", &lab.c);
    cmd.arg("annex").args(args);
    let mut p = support::ProcessGuard::spawn(&mut cmd);
    let start = Instant::now();
    let mut killed = false;
    let mut ended = None;
    // Fault injection: the kill comes at a seeded moment, whatever the
    // transfer is doing then (the checks afterwards do not depend on it).
    while start.elapsed() < delay {
        if p.wait_timeout(Duration::from_millis(5)).is_some() {
            ended = Some(start.elapsed());
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !killed && Instant::now() < deadline {
        if p.wait_timeout(Duration::ZERO).is_some() {
            break;
        }
        for (pid, cmdline) in descendants(p.pid()) {
            if std::env::var_os("ANNEXMESH_CAMPAIGN_DEBUG").is_some() {
                eprintln!("  process {pid}: {cmdline}");
            }
            if is_victim(victim, &cmdline, lab) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                killed = true;
                break;
            }
        }
        if !killed {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Whatever was killed, the rest of the round's processes end by
    // themselves (EOF on their pipes): none may hang on.
    let status = p.wait_timeout(TIMEOUT);
    assert!(
        status.is_some(),
        "git annex {args:?} hung after {victim:?} was killed\n{}\n{}",
        p.stdout(),
        p.stderr()
    );
    let pgid = p.pid();
    let start = Instant::now();
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "processes of the round left running after {victim:?} was killed: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Killing { killed, ended }
}

/// What [`run_and_kill`] did.
struct Killing {
    killed: bool,
    /// How long the operation took, when it ended before the kill.
    ended: Option<Duration>,
}

/// Where kill points are drawn from, per operation: at first a guess of
/// each one's length here, then, whenever one ends before its kill, just
/// under the length it took, so the kills keep landing mid-operation on a
/// faster machine too (which moments, then, depends on the timing as well
/// as the seed).
struct Spans(BTreeMap<Op, u64>);

impl Spans {
    fn new() -> Spans {
        Spans(BTreeMap::from([
            (Op::Put, 1000),
            (Op::Get, 700),
            (Op::Drop, 250),
        ]))
    }

    fn of(&self, op: Op) -> u64 {
        self.0.get(&op).copied().unwrap_or(250)
    }

    fn ended_after(&mut self, op: Op, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let span = self.0.entry(op).or_insert(250);
        *span = (*span).min(ms.saturating_mul(9) / 10).max(20);
    }
}

/// Processes still in process group `pgid`.
fn group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let mut f = after.split_whitespace();
        let state = f.next();
        let pg = f.nth(1).and_then(|p| p.parse::<u32>().ok());
        if pg == Some(pgid) && state != Some("Z") {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// The checks after every round (see the module docs).
fn check_all(lab: &Lab, fig: &mut Figures, round: usize) {
    for repo in lab.repos() {
        for (key, path) in object_files(repo) {
            let (size, hash) = key_parts(&key).unwrap_or_else(|| panic!("odd key {key}"));
            let len = std::fs::metadata(&path)
                .map(|m| m.len())
                .unwrap_or(u64::MAX);
            assert_eq!(
                len,
                size,
                "round {round}: {} has {len} bytes",
                path.display()
            );
            assert_eq!(
                sha256_of(&path),
                hash,
                "round {round}: {} is corrupt",
                path.display()
            );
            fig.objects_checked += 1;
        }
        let tmp = repo.join(".git/annex/tmp");
        let left = files_under(&tmp);
        assert!(
            left.is_empty(),
            "round {round}: left in {}: {left:?}",
            tmp.display()
        );
    }
    for repo in lab.nodes.iter().chain([&lab.c]) {
        let f = lab.run(repo, "git", &["annex", "fsck", "--fast", "--quiet"]);
        assert!(
            f.status.success(),
            "round {round}: fsck --fast in {} failed\n{}\n{}",
            repo.display(),
            f.stdout,
            f.stderr
        );
        fig.fscks += 1;
    }
}

fn write_file(lab: &Lab, rng: &mut Rng, round: usize) -> String {
    let name = format!("f{round}.bin");
    let len = (2 << 20) + rng.below(2 << 20) as usize;
    let mut state = rng.next() | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(lab.c.join(&name), bytes).expect("write file");
    lab.ok(&lab.c, "git", &["annex", "add", &name]);
    lab.ok(&lab.c, "git", &["commit", "-q", "-m", &name]);
    name
}

/// A PUT to the cluster succeeds once one node stored the content; a node
/// whose part of the fan-out was cut keeps its partial file for a resume.
/// Copying to each node's own remote (`G-N<i>`) resumes those, so that every
/// node ends the round with the content and no partial left.
fn fill(lab: &Lab, file: &str) {
    for i in 1..=lab.nodes.len() {
        lab.ok(
            &lab.c,
            "git",
            &["annex", "copy", file, "--to", &format!("G-N{i}")],
        );
    }
}

fn campaign(rounds: usize, seed: u64) -> Figures {
    let lab = Lab::new();
    let mut rng = Rng(seed | 1);
    let mut fig = Figures::default();
    let mut files: Vec<String> = Vec::new();
    let to = format!("G-{CLUSTER}");
    let mut spans = Spans::new();
    for round in 0..rounds {
        let op = match rng.below(3) {
            0 => Op::Put,
            1 if !files.is_empty() => Op::Get,
            2 if !files.is_empty() => Op::Drop,
            _ => Op::Put,
        };
        let victim = match rng.below(3) {
            0 => Victim::Client,
            1 => Victim::Gateway,
            _ => Victim::Node,
        };
        // Kill points spread over each operation's length here (a drop is
        // over sooner than a transfer of a few MiB).
        let delay = Duration::from_millis(rng.below(spans.of(op)));
        let killing;
        match op {
            Op::Put => {
                let f = write_file(&lab, &mut rng, round);
                killing = run_and_kill(&lab, &["copy", &f, "--to", &to], victim, delay);
                lab.ok(&lab.c, "git", &["annex", "copy", &f, "--to", &to]);
                fill(&lab, &f);
                files.push(f);
            }
            Op::Get => {
                let f = files[rng.below(files.len() as u64) as usize].clone();
                let have = lab.c.join(&f).exists();
                if have {
                    lab.ok(&lab.c, "git", &["annex", "drop", &f]);
                }
                killing = run_and_kill(&lab, &["get", &f, "--from", &to], victim, delay);
                lab.ok(&lab.c, "git", &["annex", "get", &f, "--from", &to]);
            }
            Op::Drop => {
                let f = files[rng.below(files.len() as u64) as usize].clone();
                lab.ok(&lab.c, "git", &["annex", "get", &f, "--from", &to]);
                let key = lab
                    .ok(&lab.c, "git", &["annex", "lookupkey", &f])
                    .trim()
                    .to_owned();
                let before = lab.holders(&key).len();
                // A local drop races a drop from the cluster; one of the
                // round's processes is killed meanwhile.
                let racer = {
                    let mut cmd = lab.command("git", &lab.c);
                    cmd.args(["annex", "drop", &f]);
                    support::ProcessGuard::spawn(&mut cmd)
                };
                killing = run_and_kill(&lab, &["drop", &f, "--from", &to], victim, delay);
                let mut racer = racer;
                assert!(
                    racer.wait_timeout(TIMEOUT).is_some(),
                    "the racing drop hung"
                );
                let after = lab.holders(&key);
                assert!(
                    after.len() >= NUMCOPIES.min(before),
                    "round {round}: {key} left on {after:?} (numcopies {NUMCOPIES})"
                );
                fig.min_copies_after_drop = Some(
                    fig.min_copies_after_drop
                        .map_or(after.len(), |m| m.min(after.len())),
                );
                // Back to every node, for the next rounds.
                if lab.c.join(&f).exists() || !after.iter().any(|h| h == "C") {
                    let _ = lab.annex_c(&["get", &f, "--from", &to]);
                }
                lab.ok(&lab.c, "git", &["annex", "copy", &f, "--to", &to]);
                fill(&lab, &f);
            }
        }
        let killed = killing.killed;
        if let Some(took) = killing.ended {
            spans.ended_after(op, took);
        }
        if killed {
            *fig.killed.entry((op, victim)).or_default() += 1;
            fig.resumed += 1;
        } else {
            *fig.missed.entry((op, victim)).or_default() += 1;
        }
        check_all(&lab, &mut fig, round);
        fig.rounds += 1;
        eprintln!(
            "round {round}: {op:?}, {victim:?} after {} ms: {}",
            delay.as_millis(),
            if killed { "killed" } else { "finished first" }
        );
    }
    fig
}

fn print(fig: &Figures, seed: u64) {
    println!("campaign: seed {seed}, {} rounds", fig.rounds);
    for ((op, victim), n) in &fig.killed {
        println!("  killed  {op:?}/{victim:?}: {n}");
    }
    for ((op, victim), n) in &fig.missed {
        println!("  missed  {op:?}/{victim:?}: {n} (the operation ended before the kill)");
    }
    println!(
        "  resumed and completed: {}; objects hashed: {}; fsck runs: {}; fewest copies after racing drops: {} (numcopies {NUMCOPIES}); violations: 0",
        fig.resumed,
        fig.objects_checked,
        fig.fscks,
        fig.min_copies_after_drop
            .map_or("-".into(), |m| m.to_string()),
    );
}

#[test]
fn kill_campaign() {
    let rounds = std::env::var("ANNEXMESH_CAMPAIGN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed = std::env::var("ANNEXMESH_CAMPAIGN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let fig = campaign(rounds, seed);
    print(&fig, seed);
    assert_eq!(fig.rounds, rounds);
}

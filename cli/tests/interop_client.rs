//! Stock git-annex as the CLIENT of an ssh-style remote whose `git-annex-shell`
//! is either the real one (`real_*` tests) or our `annexmesh` in its
//! `git-annex-shell` guise (`ours_*` tests).
//!
//! Every scenario runs the same code against both servers: the `real_*` runs
//! show that the test itself is right, the `ours_*` runs show that our server
//! is a drop-in replacement.
//!
//! Setup (per test, in a fresh temporary directory with its own HOME): client
//! repository A and server repository B (a normal non-bare repository), both made
//! by the real git-annex. A has B as the remote `B = localhost:<abs path of B>`.
//! git-annex reaches it through `testdata/tools/fake-ssh`
//! (`GIT_ANNEX_USE_GIT_SSH=1 GIT_SSH=fake-ssh`); for our server,
//! `FAKE_SSH_GIT_ANNEX_SHELL` points at a symlink named `git-annex-shell` to our
//! binary, which then serves `configlist` and `p2pstdio`.
//!
//! After each operation the test checks both sides: git-annex's exit status
//! and output in A, and the object files in B (path, bytes, read-only mode,
//! B's own location log) — and the REAL git-annex must accept B's objects
//! (`git annex fsck --key` run in B). Every A-side command is also checked on
//! the wire (the fake-ssh log): only `configlist` and `p2pstdio` may be asked
//! of the server (no fallback to the legacy `recvkey`/`sendkey` commands), and
//! the server program must be the one under test. Failure messages include the
//! wire transcript of the failing command.
//!
//! Where a scenario needs content already on B, it is put there through the
//! REAL git-annex-shell ("seeding"), so that each `ours_*` test exercises one
//! operation of our server, and also shows that our server serves objects
//! stored by git-annex itself.
//!
//! Run: `cargo test -p annexmesh-cli --test interop_client real_` (or `ours_`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Longest any single git / git-annex command may take before the test
/// kills it and fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Which program answers as `git-annex-shell` on the "remote" side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// The stock `git-annex-shell` from the PyPI wheel.
    Real,
    /// Our `annexmesh` binary, invoked as `git-annex-shell`.
    Ours,
}

/// One finished command, with what it printed and what went over the wire.
struct Run {
    what: String,
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    /// stdout with progress meters removed (see [`normalize`]).
    out: String,
    /// The part of the fake-ssh log written while the command ran.
    wire: String,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "command: {}\nexit: {}\n--- stdout (normalized) ---\n{}\n--- stdout (raw) ---\n{}\n--- stderr ---\n{}\n--- wire (fake-ssh log) ---\n{}",
            self.what,
            self.status,
            self.out,
            self.stdout.replace('\r', "\\r"),
            self.stderr,
            if self.wire.is_empty() {
                "(no ssh invocation)"
            } else {
                &self.wire
            }
        )
    }

    fn ok(&self) -> &Self {
        assert!(self.status.success(), "expected success\n{}", self.report());
        self
    }

    fn failed(&self) -> &Self {
        assert!(
            !self.status.success(),
            "expected failure\n{}",
            self.report()
        );
        self
    }

    /// Requires a line of the normalized stdout equal to `line`.
    fn line(&self, line: &str) -> &Self {
        assert!(
            self.out.lines().any(|l| l == line),
            "expected the line {line:?} in the output\n{}",
            self.report()
        );
        self
    }

    /// Requires `text` somewhere in stdout or stderr.
    fn says(&self, text: &str) -> &Self {
        assert!(
            self.out.contains(text) || self.stderr.contains(text),
            "expected {text:?} in the output\n{}",
            self.report()
        );
        self
    }

    /// Requires `text` in the wire transcript.
    fn wire_has(&self, text: &str) -> &Self {
        assert!(
            self.wire.contains(text),
            "expected {text:?} on the wire\n{}",
            self.report()
        );
        self
    }

    /// Requires `text` to be absent from the wire transcript.
    fn wire_lacks(&self, text: &str) -> &Self {
        assert!(
            !self.wire.contains(text),
            "did not expect {text:?} on the wire\n{}",
            self.report()
        );
        self
    }

    /// How many `p2pstdio` sessions the command opened.
    fn p2p_sessions(&self) -> usize {
        self.wire
            .lines()
            .filter(|l| l.contains(" run: ") && l.contains("p2pstdio"))
            .count()
    }
}

/// git-annex draws progress meters between `\r`s, also in the middle of a
/// line of text. Drop the meters and blank segments, drop empty lines, and join
/// "copy x (to B...) " with the "ok"/"failed" that ends up on the next line,
/// so that the result reads like git-annex's output without progress:
/// `copy x (to B...) ok`.
fn normalize(raw: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    for l in raw.split('\n') {
        let seg: String = l
            .split('\r')
            .filter(|s| !s.trim().is_empty() && !is_progress_meter(s))
            .collect();
        let visible = seg.trim_end();
        if visible.trim().is_empty() {
            continue;
        }
        if let Some(p) = pending.take() {
            let t = visible.trim();
            if t == "ok" || t == "failed" {
                lines.push(format!("{p} {t}"));
                continue;
            }
            lines.push(p);
        }
        if seg.ends_with(' ') {
            pending = Some(visible.to_string());
        } else {
            lines.push(visible.to_string());
        }
    }
    lines.extend(pending);
    lines.join("\n")
}

/// A progress meter as git-annex draws it between `\r`s: `100%  6 B  5 KiB/s 0s`.
fn is_progress_meter(segment: &str) -> bool {
    let t = segment.trim_start();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && t[digits..].starts_with('%')
}

/// Deterministic pseudo-random bytes (splitmix64), so tests need no RNG crate.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The standard set of files: a small one, one with spaces in its name, an
/// empty one and a 5 MiB one (several DATA chunks on the wire).
fn standard_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("hello.txt", b"hello\n".to_vec()),
        (
            "file with spaces.txt",
            b"content of a file with spaces\n".to_vec(),
        ),
        ("empty.txt", Vec::new()),
        ("big.bin", pseudo_random(5 * 1024 * 1024, 1)),
    ]
}

/// A client repository A, a server repository B, and the fake-ssh plumbing.
struct Lab {
    /// The temporary directory holding everything (None once dropped).
    tmp: Option<tempfile::TempDir>,
    home: PathBuf,
    a: PathBuf,
    b: PathBuf,
    server: Server,
    /// `<tmp>/shim/git-annex-shell` -> our binary (only for `Server::Ours`).
    shim: PathBuf,
    /// FAKE_SSH_LOG: the wire transcript of every ssh invocation.
    log: PathBuf,
    b_uuid: String,
    /// Failed checks of B's own bookkeeping (its location log), reported at
    /// the end of the scenario so that the checks after them still run.
    deferred: std::cell::RefCell<Vec<String>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let Some(tmp) = self.tmp.take() else { return };
        if std::thread::panicking() && std::env::var_os("ANNEXMESH_KEEP_LAB").is_some() {
            let kept = tmp.keep();
            eprintln!(
                "(kept the lab of the failed test: {}; wire log: {})",
                kept.display(),
                self.log.display()
            );
            return;
        }
        // git-annex makes object directories read-only; make them removable.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(tmp.path())
            .status();
        if std::thread::panicking() {
            eprintln!("(set ANNEXMESH_KEEP_LAB=1 to keep the repositories of a failed test)");
        }
    }
}

impl Lab {
    fn new(server: Server) -> Lab {
        support::git_annex_bin_dir(); // fails with instructions when git-annex is missing
        let tmp = tempfile::Builder::new()
            .prefix("interop-client-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let home = root.join("home");
        std::fs::create_dir_all(&home).expect("mkdir home");
        std::fs::write(
            home.join(".gitconfig"),
            "[init]\n\tdefaultBranch = master\n[annex]\n\tsshcaching = false\n",
        )
        .expect("write .gitconfig");
        let shim_dir = root.join("shim");
        std::fs::create_dir_all(&shim_dir).expect("mkdir shim");
        let shim = shim_dir.join("git-annex-shell");
        if server == Server::Ours {
            std::os::unix::fs::symlink(support::annexmesh_bin(), &shim).expect("symlink shim");
        }
        let log = root.join("fake-ssh.log");
        std::fs::write(&log, "").expect("create log");
        let mut lab = Lab {
            a: root.join("A"),
            b: root.join("B"),
            tmp: Some(tmp),
            home,
            server,
            shim,
            log,
            b_uuid: String::new(),
            deferred: Default::default(),
        };

        lab.git(&root, &["init", "-q", "A"]).ok();
        lab.git(&root, &["init", "-q", "B"]).ok();
        lab.annex_b(&["init", "B"]).ok();
        lab.b_uuid = lab
            .git(&lab.b, &["config", "annex.uuid"])
            .ok()
            .stdout
            .trim()
            .to_string();
        assert!(!lab.b_uuid.is_empty(), "B has no annex.uuid");
        lab.annex_local_a(&["init", "A"]).ok();
        let b_url = format!("localhost:{}", lab.b.display());
        lab.git(&lab.a, &["remote", "add", "B", &b_url]).ok();
        lab.git(&lab.a, &["config", "annex.sshcaching", "false"])
            .ok();
        // git fetch goes through fake-ssh (git-upload-pack); then the first
        // git-annex command that looks at B runs `configlist` on the server.
        lab.git(&lab.a, &["fetch", "B"]).ok();
        let info = lab.annex_a(&["info", "B"]);
        info.ok()
            .wire_has("configlist")
            .wire_has(&format!("annex.uuid={}", lab.b_uuid));
        let learned = lab.git(&lab.a, &["config", "remote.B.annex-uuid"]);
        assert_eq!(
            learned.stdout.trim(),
            lab.b_uuid,
            "A did not learn B's uuid from configlist\n{}",
            info.report()
        );
        lab
    }

    fn command(&self, program: &str, dir: &Path, server: Server) -> Command {
        let mut cmd = support::command_in(program, dir, &self.home);
        cmd.env("GIT_ANNEX_USE_GIT_SSH", "1")
            .env("GIT_SSH", support::tools_dir().join("fake-ssh"))
            .env("FAKE_SSH_LOG", &self.log)
            .env_remove("FAKE_SSH_TAP_ONLY_P2P")
            .env_remove("GIT_SSH_COMMAND")
            .env_remove("GIT_ANNEX_SHELL_READONLY")
            .env_remove("GIT_ANNEX_SHELL_APPENDONLY")
            .env_remove("GIT_ANNEX_SHELL_DIRECTORY")
            .env_remove("GIT_ANNEX_SHELL_LIMITED");
        match server {
            Server::Ours => cmd.env("FAKE_SSH_GIT_ANNEX_SHELL", &self.shim),
            Server::Real => cmd.env_remove("FAKE_SSH_GIT_ANNEX_SHELL"),
        };
        cmd
    }

    fn run(&self, program: &str, dir: &Path, args: &[&str], server: Server) -> Run {
        self.run_env(program, dir, args, server, &[])
    }

    fn run_env(
        &self,
        program: &str,
        dir: &Path,
        args: &[&str],
        server: Server,
        env: &[(&str, &str)],
    ) -> Run {
        let before = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command(program, dir, server);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let fin = support::run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
        let log = std::fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(before).unwrap_or(0).min(log.len());
        let wire = String::from_utf8_lossy(&log[start..]).into_owned();
        let where_ = if dir == self.a {
            "A".to_string()
        } else if dir == self.b {
            "B".to_string()
        } else {
            dir.display().to_string()
        };
        let env_shown: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        Run {
            what: format!(
                "(in {where_}, server {:?}) {env_shown}{program} {}",
                server,
                args.join(" ")
            ),
            out: normalize(&fin.stdout),
            status: fin.status,
            stdout: fin.stdout,
            stderr: fin.stderr,
            wire,
        }
    }

    fn git(&self, dir: &Path, args: &[&str]) -> Run {
        self.run("git", dir, args, self.server)
    }

    /// `git annex ARGS` in A, served by the server under test; the wire is
    /// checked (see [`Lab::check_wire`]).
    fn annex_a(&self, args: &[&str]) -> Run {
        self.annex_a_via(self.server, args)
    }

    /// `git annex ARGS` in A, served by the REAL git-annex-shell (seeding).
    fn annex_a_real(&self, args: &[&str]) -> Run {
        self.annex_a_via(Server::Real, args)
    }

    fn annex_a_via(&self, server: Server, args: &[&str]) -> Run {
        self.annex_a_env(server, &[], args)
    }

    /// `git annex ARGS` in A with extra environment variables, which reach
    /// the server too (fake-ssh runs it with git-annex's environment).
    fn annex_a_env(&self, server: Server, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut full = vec!["annex"];
        full.extend_from_slice(args);
        let run = self.run_env("git", &self.a, &full, server, env);
        self.check_wire(&run, server);
        run
    }

    /// `git annex ARGS` in A for commands that must not contact B at all.
    fn annex_local_a(&self, args: &[&str]) -> Run {
        let mut full = vec!["annex"];
        full.extend_from_slice(args);
        self.run("git", &self.a, &full, self.server)
    }

    /// The real `git annex ARGS` run inside B (no ssh involved).
    fn annex_b(&self, args: &[&str]) -> Run {
        let mut full = vec!["annex"];
        full.extend_from_slice(args);
        self.run("git", &self.b, &full, self.server)
    }

    /// Every server invocation must be `configlist` or `p2pstdio` (no
    /// fallback to git-annex-shell's legacy per-command interface), run by the
    /// intended program.
    fn check_wire(&self, run: &Run, server: Server) {
        for line in run.wire.lines().filter(|l| l.contains(" run: sh -c ")) {
            let cmd = line.split(" run: sh -c ").nth(1).unwrap_or("");
            if cmd.starts_with("git-upload-pack") || cmd.starts_with("git-receive-pack") {
                continue;
            }
            let verb_ok = cmd.contains("\\'configlist\\'") || cmd.contains("\\'p2pstdio\\'");
            assert!(
                verb_ok,
                "git-annex asked the server for something other than configlist/p2pstdio \
                 (a fallback from p2pstdio?): {cmd}\n{}",
                run.report()
            );
            let program_ok = match server {
                Server::Real => cmd.starts_with("git-annex-shell\\ "),
                Server::Ours => cmd.starts_with(&format!("{}\\ ", self.shim.display())),
            };
            assert!(
                program_ok,
                "the server program is not the one under test ({server:?}): {cmd}\n{}",
                run.report()
            );
        }
    }

    /// Writes the files into A, `git annex add`s them (with `backend`, when
    /// given) and commits. Returns (name, key, content) for each.
    fn add_files(
        &self,
        files: &[(&str, Vec<u8>)],
        backend: Option<&str>,
    ) -> Vec<(String, String, Vec<u8>)> {
        let mut added = Vec::new();
        for (name, content) in files {
            std::fs::write(self.a.join(name), content).expect("write file in A");
        }
        let mut args = vec!["add"];
        if let Some(b) = backend {
            args.push("--backend");
            args.push(b);
        }
        args.push("--");
        for (name, _) in files {
            args.push(name);
        }
        self.annex_local_a(&args).ok();
        self.git(&self.a, &["commit", "-q", "-m", "add files"]).ok();
        for (name, content) in files {
            let key = self.key_of(name);
            added.push((name.to_string(), key, content.clone()));
        }
        added
    }

    fn key_of(&self, file: &str) -> String {
        let run = self.annex_local_a(&["lookupkey", "--", file]);
        run.ok();
        let key = run.stdout.trim().to_string();
        assert!(!key.is_empty(), "no key for {file}\n{}", run.report());
        key
    }

    /// `.git/annex/objects/...` for `key` in `repo`, as the real git-annex computes it.
    fn object_path(&self, repo: &Path, key: &str) -> PathBuf {
        let run = self.run(
            "git",
            repo,
            &["annex", "examinekey", "--format=${objectpath}\n", key],
            self.server,
        );
        run.ok();
        repo.join(run.stdout.trim())
    }

    fn assert_a_has(&self, key: &str, content: &[u8], ctx: &Run) {
        let path = self.object_path(&self.a, key);
        let got = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "A lacks {key} ({}: {e})\nafter:\n{}",
                path.display(),
                ctx.report()
            )
        });
        assert!(
            got == content,
            "A's copy of {key} has the wrong bytes ({} bytes, expected {})\nafter:\n{}",
            got.len(),
            content.len(),
            ctx.report()
        );
    }

    fn assert_a_lacks(&self, key: &str, ctx: &Run) {
        let path = self.object_path(&self.a, key);
        assert!(
            !path.exists(),
            "A still has {key} at {}\nafter:\n{}",
            path.display(),
            ctx.report()
        );
    }

    /// B holds `key` with exactly `content`, where and how git-annex keeps it,
    /// B's own location log says so, and the real `git annex fsck` in B accepts it.
    fn assert_b_has(&self, key: &str, content: &[u8], ctx: &Run) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.object_path(&self.b, key);
        let got = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "B lacks the object file {} ({e})\nafter:\n{}\n--- B/.git/annex ---\n{}",
                path.display(),
                ctx.report(),
                self.list_b_annex()
            )
        });
        assert!(
            got == content,
            "B's object {key} has the wrong bytes ({} bytes, expected {})\nafter:\n{}",
            got.len(),
            content.len(),
            ctx.report()
        );
        let mode = std::fs::metadata(&path)
            .expect("stat object")
            .permissions()
            .mode();
        assert!(
            mode & 0o222 == 0,
            "B's object file {} is writable (mode {mode:o}); git-annex stores objects read-only\nafter:\n{}",
            path.display(),
            ctx.report()
        );
        let leftover = self.b.join(".git/annex/tmp").join(key);
        assert!(
            !leftover.exists(),
            "B still has a temporary file {} after a completed transfer\nafter:\n{}",
            leftover.display(),
            ctx.report()
        );
        let loc = self.annex_b(&["contentlocation", key]);
        loc.ok();
        assert_eq!(
            self.b.join(loc.stdout.trim()),
            path,
            "git annex contentlocation in B disagrees\n{}",
            loc.report()
        );
        // B's own location log (the real git-annex-shell records that B now
        // has the key). Read it before fsck, which would repair it.
        let whereis = self.annex_b(&["whereis", "--key", key]);
        let fsck = self.annex_b(&["fsck", "--key", key]);
        assert!(
            fsck.status.success() && fsck.out.contains(" ok"),
            "the real git-annex fsck in B rejects {key}\n{}\nafter:\n{}",
            fsck.report(),
            ctx.report()
        );
        if !(whereis.status.success() && whereis.out.contains(&format!("{} -- ", self.b_uuid))) {
            self.defer(format!(
                "B's location log does not record that B has {key}\n{}\nafter: {}",
                whereis.report(),
                ctx.what
            ));
        }
    }

    /// Records a failed bookkeeping check; [`Lab::finish`] fails the test.
    fn defer(&self, failure: String) {
        self.deferred.borrow_mut().push(failure);
    }

    /// Fails the test if any deferred check failed.
    fn finish(&self) {
        let deferred = self.deferred.borrow();
        assert!(
            deferred.is_empty(),
            "{} check(s) of B's location log failed (all other checks passed):\n\n{}",
            deferred.len(),
            deferred.join("\n\n")
        );
    }

    /// B does not hold `key`, and B's own location log agrees.
    fn assert_b_lacks(&self, key: &str, ctx: &Run) {
        let path = self.object_path(&self.b, key);
        assert!(
            !path.exists(),
            "B still has the object file {}\nafter:\n{}",
            path.display(),
            ctx.report()
        );
        self.annex_b(&["contentlocation", key]).failed();
        let whereis = self.annex_b(&["whereis", "--key", key]);
        if whereis.out.contains(&format!("{} -- ", self.b_uuid)) {
            self.defer(format!(
                "B's location log still says B has {key}\n{}\nafter: {}",
                whereis.report(),
                ctx.what
            ));
        }
    }

    /// A's location log (what `git annex whereis` in A says) about B.
    fn assert_a_thinks_b_has(&self, file: &str, expected: bool) {
        let run = self.annex_local_a(&["whereis", "--", file]);
        let listed = run.out.contains(&format!("{} -- ", self.b_uuid));
        assert_eq!(
            listed,
            expected,
            "git annex whereis in A: B listed = {listed}, expected {expected}\n{}",
            run.report()
        );
    }

    fn list_b_annex(&self) -> String {
        let out = Command::new("find")
            .arg(self.b.join(".git/annex/objects"))
            .arg(self.b.join(".git/annex/tmp"))
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("(find failed: {e})"),
        }
    }

    /// Puts the files on B through the REAL git-annex-shell.
    fn seed_b(&self, files: &[(String, String, Vec<u8>)]) {
        let mut args = vec!["copy", "--to", "B", "--"];
        for (name, _, _) in files {
            args.push(name);
        }
        let run = self.annex_a_real(&args);
        run.ok();
        for (_, key, content) in files {
            let stored = std::fs::read(self.object_path(&self.b, key)).unwrap_or_default();
            assert!(
                stored == *content,
                "seeding B failed for {key}\n{}",
                run.report()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// copy --to B (first transfer: CHECKPRESENT + PUT for each file), then
/// copy --to B again (nothing sent), and whereis in A.
fn scenario_copy_to(lab: &Lab) {
    let files = lab.add_files(&standard_files(), None);

    let run = lab.annex_a(&["copy", "--to", "B", "."]);
    run.ok().wire_has("p2pstdio").wire_has("C->S | PUT ");
    for (name, _, _) in &files {
        run.line(&format!("copy {name} (to B...) ok"));
    }
    for (name, key, content) in &files {
        lab.assert_b_has(key, content, &run);
        lab.assert_a_has(key, content, &run);
        lab.assert_a_thinks_b_has(name, true);
    }
    // The 5 MiB file was sent as one DATA frame of the full size.
    let big = &files[3];
    run.wire_has(&format!("C->S | PUT big.bin {}", big.1))
        .wire_has("C->S | DATA 5242880")
        .wire_has("C->S | PUT file%with%spaces.txt ")
        .wire_has("C->S | DATA 0");

    let again = lab.annex_a(&["copy", "--to", "B", "."]);
    again.ok().wire_lacks("C->S | PUT ");
    for (name, key, content) in &files {
        again.line(&format!("copy {name} ok"));
        lab.assert_b_has(key, content, &again);
    }

    let whereis = lab.annex_a(&["whereis", "hello.txt"]);
    whereis
        .ok()
        .line("whereis hello.txt (2 copies)")
        .says(&format!("{} -- ", lab.b_uuid));
}

/// copy --to B where B already has the content (put there out of band, A's
/// location log does not know): the server must answer CHECKPRESENT with
/// SUCCESS and no data is sent.
fn scenario_copy_to_already_present(lab: &Lab) {
    let files = lab.add_files(&standard_files()[..2], None);
    lab.seed_b(&files);
    // Make A forget that B has them.
    for (name, _, _) in &files {
        lab.annex_local_a(&["setpresentkey", &lab.key_of(name), &lab.b_uuid, "0"])
            .ok();
        lab.assert_a_thinks_b_has(name, false);
    }
    let run = lab.annex_a(&["copy", "--to", "B", "."]);
    run.ok()
        .wire_has("C->S | CHECKPRESENT ")
        .wire_lacks("C->S | DATA ");
    for (name, key, content) in &files {
        lab.assert_b_has(key, content, &run);
        lab.assert_a_thinks_b_has(name, true);
    }
}

/// fsck --from B --fast (CHECKPRESENT only) and full (GET and verify), then
/// fsck --fast when B lost a file out of band (CHECKPRESENT -> FAILURE).
fn scenario_fsck_from(lab: &Lab) {
    let files = lab.add_files(&standard_files(), None);
    lab.seed_b(&files);

    let fast = lab.annex_a(&["fsck", "--from", "B", "--fast"]);
    fast.ok()
        .wire_has("C->S | CHECKPRESENT ")
        .wire_lacks("C->S | GET ");
    for (name, _, _) in &files {
        fast.line(&format!("fsck {name} ok"));
    }

    let full = lab.annex_a(&["fsck", "--from", "B"]);
    full.ok().wire_has("C->S | GET ");
    for (name, key, content) in &files {
        full.line(&format!("fsck {name} ok"));
        lab.assert_b_has(key, content, &full);
    }

    // B loses hello.txt behind A's back.
    let (name, key, _) = &files[0];
    lab.annex_b(&["drop", "--force", "--key", key]).ok();
    let lost = lab.annex_a(&["fsck", "--from", "B", "--fast", "--", name]);
    lost.failed()
        .line(&format!("fsck {name} (fixing location log) failed"))
        .wire_has(&format!("C->S | CHECKPRESENT {key}"));
    lab.assert_a_thinks_b_has(name, false);
}

/// drop (local) with numcopies 1 proves B's copy with LOCKCONTENT; then
/// get --from B brings it back.
fn scenario_get_from(lab: &Lab) {
    let files = lab.add_files(&standard_files(), None);
    lab.seed_b(&files);

    for (name, key, content) in &files {
        let drop = lab.annex_a(&["drop", "--", name]);
        drop.ok()
            .line(&format!("drop {name} (locking B...) ok"))
            .wire_has(&format!("C->S | LOCKCONTENT {key}"));
        lab.assert_a_lacks(key, &drop);
        lab.assert_b_has(key, content, &drop);
    }

    let get = lab.annex_a(&["get", "--from", "B", "."]);
    get.ok().wire_has("C->S | GET ");
    for (name, key, content) in &files {
        get.line(&format!("get {name} (from B...) ok"));
        lab.assert_a_has(key, content, &get);
        lab.assert_b_has(key, content, &get);
        let on_disk = std::fs::read(lab.a.join(name)).expect("read file in A");
        assert!(on_disk == *content, "A's work tree file {name} differs");
    }
}

/// drop --from B (REMOVE).
fn scenario_drop_from(lab: &Lab) {
    let files = lab.add_files(&standard_files(), None);
    lab.seed_b(&files);

    for (name, key, content) in &files {
        let run = lab.annex_a(&["drop", "--from", "B", "--", name]);
        run.ok()
            .line(&format!("drop {name} (from B...) ok"))
            .wire_has(&format!("C->S | REMOVE {key}"));
        lab.assert_b_lacks(key, &run);
        lab.assert_a_has(key, content, &run);
        lab.assert_a_thinks_b_has(name, false);
    }
}

/// move --to B, then move --from B.
fn scenario_move(lab: &Lab) {
    let files = lab.add_files(&standard_files(), None);

    for (name, key, content) in &files {
        let to = lab.annex_a(&["move", "--to", "B", "--", name]);
        to.ok()
            .line(&format!("move {name} (to B...) ok"))
            .wire_has("C->S | PUT ");
        lab.assert_b_has(key, content, &to);
        lab.assert_a_lacks(key, &to);
        lab.assert_a_thinks_b_has(name, true);
    }
    for (name, key, content) in &files {
        let from = lab.annex_a(&["move", "--from", "B", "--", name]);
        from.ok()
            .line(&format!("move {name} (from B...) ok"))
            .wire_has(&format!("C->S | GET 0 {}", name.replace(' ', "%")))
            .wire_has(&format!("C->S | REMOVE {key}"));
        lab.assert_a_has(key, content, &from);
        lab.assert_b_lacks(key, &from);
        lab.assert_a_thinks_b_has(name, false);
    }
}

/// get --from B of content B does not have (although A's location log says
/// it does) fails cleanly, and the same session then still serves a file B has.
fn scenario_get_absent(lab: &Lab) {
    let files = lab.add_files(
        &[
            ("lost.txt", b"this will be lost\n".to_vec()),
            ("kept.txt", b"this stays on B\n".to_vec()),
        ],
        None,
    );
    lab.seed_b(&files);
    let (lost, lost_key, _) = &files[0];
    let (kept, kept_key, kept_content) = &files[1];
    lab.annex_b(&["drop", "--force", "--key", lost_key]).ok();
    for (name, _, _) in &files {
        lab.annex_local_a(&["drop", "--force", "--", name]).ok();
    }
    lab.assert_a_thinks_b_has(lost, true);

    let run = lab.annex_a(&["get", "--from", "B", "--", lost, kept]);
    run.failed()
        .line(&format!("get {lost} (from B...) failed"))
        .line(&format!("get {kept} (from B...) ok"))
        .says("get: 1 failed")
        .wire_has(&format!("C->S | GET 0 {lost} {lost_key}"));
    lab.assert_a_lacks(lost_key, &run);
    lab.assert_a_has(kept_key, kept_content, &run);
    // The client may keep a temporary file for a later resume, but nothing
    // can have been received into it.
    let partial = std::fs::metadata(lab.a.join(".git/annex/tmp").join(lost_key))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(
        partial,
        0,
        "A received bytes of {lost_key}\n{}",
        run.report()
    );
    lab.assert_b_lacks(lost_key, &run);

    // A second attempt in a new process fails the same way.
    let again = lab.annex_a(&["get", "--from", "B", "--", lost]);
    again
        .failed()
        .line(&format!("get {lost} (from B...) failed"));
}

/// With numcopies 2, drop --from B is refused by the client (A cannot
/// verify enough copies) and B keeps the content; with numcopies 1 it goes.
fn scenario_drop_numcopies(lab: &Lab) {
    let files = lab.add_files(&standard_files()[..2], None);
    lab.seed_b(&files);
    let (name, key, content) = &files[1];

    lab.annex_local_a(&["numcopies", "2"]).ok();
    let refused = lab.annex_a(&["drop", "--from", "B", "--", name]);
    refused
        .failed()
        .line(&format!("drop {name} (from B...) (unsafe)"))
        .line("failed")
        .says("Could only verify the existence of 1 out of 2 necessary copies")
        .says("drop: 1 failed")
        .wire_lacks("C->S | REMOVE");
    lab.assert_b_has(key, content, &refused);
    lab.assert_a_thinks_b_has(name, true);

    lab.annex_local_a(&["numcopies", "1"]).ok();
    let allowed = lab.annex_a(&["drop", "--from", "B", "--", name]);
    allowed.ok().line(&format!("drop {name} (from B...) ok"));
    lab.assert_b_lacks(key, &allowed);
}

/// A server started with GIT_ANNEX_SHELL_READONLY refuses PUT but serves
/// CHECKPRESENT and GET; with GIT_ANNEX_SHELL_APPENDONLY it accepts PUT but
/// refuses REMOVE. (fake-ssh runs the server with the client's environment.)
fn scenario_readonly_appendonly(lab: &Lab) {
    let files = lab.add_files(
        &[
            ("old.txt", b"already on B\n".to_vec()),
            ("new.txt", b"not yet on B\n".to_vec()),
        ],
        None,
    );
    let (old, old_key, old_content) = &files[0];
    let (new, new_key, new_content) = &files[1];
    lab.seed_b(&files[..1]);
    let ro = [("GIT_ANNEX_SHELL_READONLY", "1")];
    let ao = [("GIT_ANNEX_SHELL_APPENDONLY", "1")];

    let put = lab.annex_a_env(lab.server, &ro, &["copy", "--to", "B", "--", new]);
    put.failed()
        .line(&format!("copy {new} (to B...) failed"))
        .wire_has(&format!("C->S | PUT {new} {new_key}"))
        .wire_has("S->C | ERROR ")
        .wire_lacks("C->S | DATA ");
    lab.assert_b_lacks(new_key, &put);
    lab.assert_a_thinks_b_has(new, false);

    let fsck = lab.annex_a_env(
        lab.server,
        &ro,
        &["fsck", "--from", "B", "--fast", "--", old],
    );
    fsck.ok().line(&format!("fsck {old} ok"));
    lab.annex_local_a(&["drop", "--force", "--", old]).ok();
    let get = lab.annex_a_env(lab.server, &ro, &["get", "--from", "B", "--", old]);
    get.ok().line(&format!("get {old} (from B...) ok"));
    lab.assert_a_has(old_key, old_content, &get);

    let put = lab.annex_a_env(lab.server, &ao, &["copy", "--to", "B", "--", new]);
    put.ok().line(&format!("copy {new} (to B...) ok"));
    lab.assert_b_has(new_key, new_content, &put);

    let remove = lab.annex_a_env(lab.server, &ao, &["drop", "--from", "B", "--", new]);
    remove
        .failed()
        .line(&format!("drop {new} (from B...) failed"))
        .wire_has(&format!("C->S | REMOVE {new_key}"))
        .wire_has("S->C | ERROR ");
    lab.assert_b_has(new_key, new_content, &remove);
    lab.assert_a_thinks_b_has(new, true);
}

/// copy -J2: two workers, two p2pstdio connections in parallel.
fn scenario_parallel_copy(lab: &Lab) {
    let inputs: Vec<(String, Vec<u8>)> = (0..6u64)
        .map(|i| (format!("rand{i}.bin"), pseudo_random(200_000, 100 + i)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = inputs
        .iter()
        .map(|(n, c)| (n.as_str(), c.clone()))
        .collect();
    let files = lab.add_files(&refs, None);

    let run = lab.annex_a(&["copy", "-J2", "--to", "B", "."]);
    run.ok();
    for (name, key, content) in &files {
        run.line(&format!("copy {name} (to B...) ok"));
        lab.assert_b_has(key, content, &run);
        lab.assert_a_thinks_b_has(name, true);
    }
    assert!(
        run.p2p_sessions() >= 2,
        "copy -J2 opened {} p2pstdio connection(s), expected 2\n{}",
        run.p2p_sessions(),
        run.report()
    );

    // And back, in parallel, after dropping locally.
    for (name, _, _) in &files {
        lab.annex_local_a(&["drop", "--force", "--", name]).ok();
    }
    let get = lab.annex_a(&["get", "-J2", "--from", "B", "."]);
    get.ok();
    for (name, key, content) in &files {
        get.line(&format!("get {name} (from B...) ok"));
        lab.assert_a_has(key, content, &get);
    }
}

/// The backends we want to exercise, limited to those this git-annex lists.
fn wanted_backends(lab: &Lab) -> Vec<String> {
    let version = lab.annex_local_a(&["version"]);
    version.ok();
    let listed: Vec<String> = version
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key/value backends:"))
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let wanted = [
        "SHA512E",
        "BLAKE2B256E",
        "MD5E",
        "WORM",
        "SHA3_256",
        "BLAKE3_256",
    ];
    let chosen: Vec<String> = wanted
        .iter()
        .filter(|b| listed.iter().any(|l| l == *b))
        .map(|b| b.to_string())
        .collect();
    for must in ["SHA512E", "BLAKE2B256E", "MD5E", "WORM", "SHA3_256"] {
        assert!(
            chosen.iter().any(|c| c == must),
            "git-annex does not list backend {must}: {listed:?}"
        );
    }
    for b in wanted.iter().filter(|b| !chosen.iter().any(|c| c == *b)) {
        eprintln!("backend {b} not supported by this git-annex; skipped");
    }
    chosen
}

/// Content under non-default backends: copy --to, drop (LOCKCONTENT), get
/// --from, full fsck --from, drop --from.
fn scenario_backends(lab: &Lab) {
    let backends = wanted_backends(lab);
    let mut files = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        let name = format!("file {backend}.dat");
        let content = pseudo_random(70_000 + i * 1000, 500 + i as u64);
        let added = lab.add_files(&[(name.as_str(), content)], Some(backend));
        let (_, key, _) = &added[0];
        assert!(
            key.starts_with(&format!("{backend}-")),
            "{name} got key {key}, not a {backend} key"
        );
        files.extend(added);
    }

    let copy = lab.annex_a(&["copy", "--to", "B", "."]);
    copy.ok();
    for (name, key, content) in &files {
        copy.line(&format!("copy {name} (to B...) ok"))
            .wire_has(&format!("C->S | CHECKPRESENT {key}"));
        lab.assert_b_has(key, content, &copy);
    }

    for (name, _, _) in &files {
        lab.annex_a(&["drop", "--", name])
            .ok()
            .line(&format!("drop {name} (locking B...) ok"));
    }
    let get = lab.annex_a(&["get", "--from", "B", "."]);
    get.ok();
    for (name, key, content) in &files {
        get.line(&format!("get {name} (from B...) ok"));
        lab.assert_a_has(key, content, &get);
    }

    let fsck = lab.annex_a(&["fsck", "--from", "B"]);
    fsck.ok();
    for (name, _, _) in &files {
        fsck.line(&format!("fsck {name} ok"));
    }

    for (name, key, _) in &files {
        let drop = lab.annex_a(&["drop", "--from", "B", "--", name]);
        drop.ok().line(&format!("drop {name} (from B...) ok"));
        lab.assert_b_lacks(key, &drop);
    }
}

/// For each scenario, a `real_<name>` test (against the stock
/// git-annex-shell) and an `ours_<name>` test (against our binary).
macro_rules! both {
    ($($real:ident, $ours:ident => $scenario:ident;)*) => {
        $(
            #[test]
            fn $real() {
                let lab = Lab::new(Server::Real);
                $scenario(&lab);
                lab.finish();
            }
            #[test]
            fn $ours() {
                let lab = Lab::new(Server::Ours);
                $scenario(&lab);
                lab.finish();
            }
        )*
    };
}

both! {
    real_copy_to, ours_copy_to => scenario_copy_to;
    real_copy_to_already_present, ours_copy_to_already_present => scenario_copy_to_already_present;
    real_fsck_from, ours_fsck_from => scenario_fsck_from;
    real_get_from, ours_get_from => scenario_get_from;
    real_drop_from, ours_drop_from => scenario_drop_from;
    real_move_to_and_from, ours_move_to_and_from => scenario_move;
    real_get_absent_fails_cleanly, ours_get_absent_fails_cleanly => scenario_get_absent;
    real_drop_from_refused_by_numcopies, ours_drop_from_refused_by_numcopies => scenario_drop_numcopies;
    real_readonly_appendonly, ours_readonly_appendonly => scenario_readonly_appendonly;
    real_copy_parallel_j2, ours_copy_parallel_j2 => scenario_parallel_copy;
    real_backends, ours_backends => scenario_backends;
}

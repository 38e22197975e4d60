//! Shared helpers for the cli integration tests: where the real git-annex is,
//! where our binary is, and small process utilities.
//!
//! The real git-annex comes from PyPI (`scripts/setup-git-annex`, run by
//! `scripts/test`). A test that needs it and cannot find it fails with a message
//! saying how to get it: it never passes silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod mesh;

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli crate lives inside the workspace")
        .to_path_buf()
}

/// Our `annexmesh` binary, as built by cargo for this test run.
pub fn annexmesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_annexmesh"))
}

/// The directory holding `git-annex`, `git-annex-shell` and `git-remote-p2p-annex`
/// (links to the PyPI wheel's binary). `ANNEXMESH_GIT_ANNEX_BIN` overrides the default
/// `<workspace>/.cache/annex-bin`.
pub fn git_annex_bin_dir() -> PathBuf {
    let dir = std::env::var_os("ANNEXMESH_GIT_ANNEX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/annex-bin"));
    let exe = dir.join("git-annex");
    assert!(
        exe.exists(),
        "stock git-annex not found at {}: run scripts/test (or scripts/setup-git-annex) first",
        exe.display()
    );
    dir
}

/// A PATH value with the real git-annex first, then the caller's PATH.
pub fn path_with_git_annex() -> std::ffi::OsString {
    let mut parts = vec![git_annex_bin_dir()];
    if let Some(old) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(parts).expect("PATH entries contain no separator")
}

/// `fake-ssh` and friends, copied from the reference material into `testdata/tools`.
pub fn tools_dir() -> PathBuf {
    workspace_root().join("testdata/tools")
}

/// The byte-exact transcripts captured from real git-annex.
pub fn transcripts_dir() -> PathBuf {
    workspace_root().join("testdata/annex-transcripts")
}

/// A `Command` with a clean, reproducible environment for running git and
/// git-annex: the real git-annex first on PATH, fixed author identity, no
/// user or system git config, HOME set to `home`.
pub fn command_in(program: impl AsRef<std::ffi::OsStr>, cwd: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env("PATH", path_with_git_annex())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "annexmesh test")
        .env("GIT_AUTHOR_EMAIL", "test@annexmesh.invalid")
        .env("GIT_COMMITTER_NAME", "annexmesh test")
        .env("GIT_COMMITTER_EMAIL", "test@annexmesh.invalid")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    cmd
}

/// Runs a command and returns its stdout; panics with stdout and stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a command run by [`run_with_timeout`] did.
#[derive(Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) in a new
/// process group and waits at most `timeout` for it and for everything it
/// started that still holds its stdout or stderr. On timeout the whole process
/// group is killed and the test panics with what was captured so far: a hang
/// fails instead of blocking the test run forever.
pub fn run_with_timeout(cmd: &mut Command, timeout: std::time::Duration) -> Finished {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Instant;

    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pgid = child.id();
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let mut pipes: Vec<(bool, Box<dyn Read + Send>)> = Vec::new();
    if let Some(out) = child.stdout.take() {
        pipes.push((true, Box::new(out)));
    }
    if let Some(err) = child.stderr.take() {
        pipes.push((false, Box::new(err)));
    }
    for (is_stdout, mut pipe) in pipes {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send((is_stdout, buf));
        });
    }
    drop(tx);

    let kill_group = || {
        // Only the process group this function created, by its id.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{pgid}"))
            .stderr(Stdio::null())
            .status();
    };

    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() >= timeout => {
                timed_out = true;
                kill_group();
                break child.wait().expect("wait after kill");
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    // Collect the output; a leftover grandchild holding a pipe open past the
    // deadline is killed too.
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut got = 0;
    while got < 2 {
        let left = timeout
            .saturating_sub(start.elapsed())
            .max(std::time::Duration::from_secs(5));
        match rx.recv_timeout(left) {
            Ok((true, b)) => {
                stdout = b;
                got += 1;
            }
            Ok((false, b)) => {
                stderr = b;
                got += 1;
            }
            Err(_) => {
                kill_group();
                while let Ok((is_stdout, b)) = rx.recv_timeout(std::time::Duration::from_secs(5)) {
                    if is_stdout {
                        stdout = b;
                    } else {
                        stderr = b;
                    }
                }
                break;
            }
        }
    }
    let fin = Finished {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    assert!(
        !timed_out,
        "{cmd:?} did not finish within {timeout:?}; killed it\nstdout:\n{}\nstderr:\n{}",
        fin.stdout, fin.stderr
    );
    fin
}

/// A background process (a daemon) in its own process group, whose stdout and
/// stderr are collected. Dropping it kills the whole group (SIGTERM, then
/// SIGKILL), so daemons and the helpers they started are cleaned up even when
/// a test fails.
pub struct ProcessGuard {
    child: std::process::Child,
    /// Kept open so that a daemon reading stdin does not see EOF.
    stdin: Option<std::process::ChildStdin>,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl ProcessGuard {
    /// Starts `cmd` with piped stdio in a new process group.
    pub fn spawn(cmd: &mut Command) -> ProcessGuard {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let collect = |pipe: Option<Box<dyn Read + Send>>| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            if let Some(mut pipe) = pipe {
                let buf = buf.clone();
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = pipe.read(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        buf.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend_from_slice(&chunk[..n]);
                    }
                });
            }
            buf
        };
        let stdout = collect(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = collect(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        ProcessGuard {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until `found` returns something for the stdout so far; panics
    /// (with the output) after `timeout` or if the process exits first.
    pub fn wait_for<T>(
        &mut self,
        timeout: std::time::Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let start = std::time::Instant::now();
        loop {
            if let Some(t) = found(&self.stdout()) {
                return t;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > timeout {
                panic!(
                    "background process {} ({exited:?}) did not print what was expected \
                     within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    self.pid(),
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. "TERM") to the process only, not its group.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Sends SIGTERM to the process only and waits for it (SIGKILL to the
    /// group after `timeout`). Returns its exit status, or `None` if it had to
    /// be killed.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill_group("KILL");
        let _ = self.child.wait();
        None
    }

    fn kill_group(&self, signal: &str) {
        // Only the process group this guard created, by its id.
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{}", self.pid()))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill_group("TERM");
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Whatever is left of the group (helpers the daemon started).
        self.kill_group("KILL");
        let _ = self.child.wait();
    }
}

/// `git show git-annex:<file>` in the repository at `git_dir` ("" when absent).
pub fn branch_file(git_dir: &Path, file: &str) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["show", &format!("git-annex:{file}")])
        .output()
        .expect("git show");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (at most `timeout`) until [`branch_file`] contains `text`.
pub fn wait_for_branch_line(git_dir: &Path, file: &str, text: &str, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = branch_file(git_dir, file);
        if got.contains(text) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never got {text:?} in {file}: {got}",
            git_dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A finished command's stdout; a panic naming `what`, with its output, if
/// it failed.
pub fn succeeded(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

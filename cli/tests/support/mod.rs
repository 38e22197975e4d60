//! Shared helpers for the cli integration tests: where the real git-annex is,
//! where our binary is, and small process utilities.
//!
//! The real git-annex comes from PyPI (`scripts/setup-git-annex`, run by
//! `scripts/test`). A test that needs it and cannot find it fails with a message
//! saying how to get it: it never passes silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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

//! Replaying a parsed transcript against a server program.
//!
//! One thread walks the events in order. Every connection is a child process with a writer
//! thread (so a server that stops reading cannot hang the test) and a reader thread for
//! stdout (so reads have a timeout); stderr is collected for failure messages only.

use super::model::{
    Action, B_UUID, ConnSpec, Expect, HELLO_CONTENT, HELLO_KEY, Transcript, WORLD_CONTENT,
    WORLD_KEY,
};
use super::pylit::show;
use crate::support;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for any expected reply, EOF or exit before calling the server hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// After a write that gets no reply (`UNLOCKCONTENT`), before another connection acts, give
/// the server time to process it: otherwise p2p-14's conn3 `REMOVE` could race conn1's unlock.
const SETTLE: Duration = Duration::from_millis(500);
/// When a reply differs, how long to keep collecting output for the failure message.
const GRACE: Duration = Duration::from_millis(300);

/// Builds the server repository B in `root/B`, as the transcript's setup lines say.
pub fn build_repo(t: &Transcript, root: &Path, home: &Path) -> PathBuf {
    let b = root.join("B");
    support::run_ok(support::command_in("git", root, home).args(["init", "-q", "B"]));
    let git = |args: &[&str]| {
        support::run_ok(support::command_in("git", &b, home).args(args));
    };
    git(&["config", "annex.uuid", B_UUID]);
    git(&["annex", "init", "B"]);
    for (wanted, file, content) in [
        (t.setup.hello, "hello.txt", HELLO_CONTENT),
        (t.setup.world, "world.txt", WORLD_CONTENT),
    ] {
        if wanted {
            std::fs::write(b.join(file), content)
                .unwrap_or_else(|e| panic!("cannot write {file} in B: {e}"));
            git(&["annex", "add", file]);
            git(&["commit", "-q", "-m", &format!("add {file}")]);
        }
    }
    b
}

/// Where and how a scenario is replayed.
pub struct Replay<'a> {
    /// `real` or `ours`, for messages.
    pub label: &'a str,
    /// The program to run as `git-annex-shell`.
    pub server: &'a Path,
    /// Scratch directory: the server's cwd, holds B, HOME and out-of-band files.
    pub root: &'a Path,
    pub home: &'a Path,
    pub repo: &'a Path,
}

impl Replay<'_> {
    pub fn run(&self, t: &Transcript) {
        let mut conns: Vec<Option<Conn>> = t.conns.iter().map(|_| None).collect();
        for (i, ev) in t.events.iter().enumerate() {
            if conns[ev.conn].is_none() {
                conns[ev.conn] = Some(self.spawn(t, &t.conns[ev.conn]));
            }
            let fail = |conns: &[Option<Conn>], msg: String| -> ! {
                self.fail(t, conns, &format!("at event #{i} `{}`", ev.line), &msg)
            };
            let conn = conns[ev.conn].as_mut().expect("spawned above");
            match &ev.action {
                Action::Send(bytes) => {
                    let bytes = conn.rewrite_remove_before(bytes);
                    if let Err(msg) = conn.write(bytes) {
                        fail(&conns, msg);
                    }
                }
                Action::Expect(expect) => {
                    if let Err(msg) = conn.expect(expect) {
                        fail(&conns, msg);
                    }
                }
                Action::CloseStdin => {
                    if let Err(msg) = conn.close_stdin() {
                        fail(&conns, msg);
                    }
                }
                Action::OutOfBand(text) => self.out_of_band(text),
                Action::Note => {}
            }
            let conn = conns[ev.conn].as_mut().expect("spawned above");
            if conn.stdin_closed
                && conn.eof
                && !conn.finished
                && let Err(msg) = conn.finish(t.conns[ev.conn].exit_code)
            {
                fail(&conns, msg);
            }
            let next_conn = t.events.get(i + 1).map(|e| e.conn);
            if matches!(ev.action, Action::Send(_)) && next_conn.is_some_and(|c| c != ev.conn) {
                thread::sleep(SETTLE);
            }
        }
        // Connections the transcript leaves open: close them and check how they end.
        for idx in 0..conns.len() {
            let Some(conn) = conns[idx].as_mut() else {
                continue;
            };
            if conn.finished {
                continue;
            }
            let result = conn
                .close_stdin()
                .and_then(|()| conn.finish(t.conns[idx].exit_code));
            if let Err(msg) = result {
                let at = format!("after the last event, in connection [{}]", t.conns[idx].tag);
                self.fail(t, &conns, &at, &msg);
            }
        }
        self.check_final_state(t);
    }

    fn spawn(&self, t: &Transcript, spec: &ConnSpec) -> Conn {
        let argv = self.map_argv(t, spec);
        let mut cmd = Command::new(self.server);
        cmd.args(&argv)
            .current_dir(self.root)
            .env_clear()
            .env("PATH", support::path_with_git_annex())
            .env("HOME", self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CEILING_DIRECTORIES", self.root)
            .env("GIT_AUTHOR_NAME", "annexmesh test")
            .env("GIT_AUTHOR_EMAIL", "test@annexmesh.invalid")
            .env("GIT_COMMITTER_NAME", "annexmesh test")
            .env("GIT_COMMITTER_EMAIL", "test@annexmesh.invalid")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a failed replay can kill the helpers it started too.
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "[{}] {}: cannot start {} for connection [{}]: {e}",
                self.label,
                t.name,
                self.server.display(),
                spec.tag
            )
        });
        Conn::new(spec.tag.clone(), child)
    }

    /// The recorded command line with the recording machine's paths replaced by ours.
    fn map_argv(&self, t: &Transcript, spec: &ConnSpec) -> Vec<PathBuf> {
        let (program, args) = spec
            .argv
            .split_first()
            .unwrap_or_else(|| panic!("{}: empty command for [{}]", t.name, spec.tag));
        assert_eq!(
            program, "git-annex-shell",
            "{}: [{}] does not run git-annex-shell",
            t.name, spec.tag
        );
        args.iter()
            .map(|arg| {
                let is_b = arg
                    .strip_prefix("/tmp/annexlab")
                    .and_then(|r| r.strip_suffix("/p2p/B"))
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
                if is_b {
                    self.repo.to_path_buf()
                } else if arg == "/tmp" {
                    // "not a repository": an empty directory outside any repository.
                    let dir = self.root.join("not-a-repo");
                    std::fs::create_dir_all(&dir).expect("create not-a-repo directory");
                    dir
                } else {
                    assert!(
                        !arg.starts_with('/'),
                        "{}: [{}] has a path argument the harness does not know: {arg}",
                        t.name,
                        spec.tag
                    );
                    PathBuf::from(arg)
                }
            })
            .collect()
    }

    /// `in B: git annex setkey <key> <file> -> ...`: the only out-of-band step there is.
    fn out_of_band(&self, text: &str) {
        let spec = text
            .strip_prefix("in B: git annex setkey ")
            .unwrap_or_else(|| panic!("unknown out-of-band step: {text}"));
        let mut words = spec.split_whitespace();
        let (Some(key), Some(file)) = (words.next(), words.next()) else {
            panic!("malformed out-of-band setkey: {text}");
        };
        let content = match key {
            HELLO_KEY => HELLO_CONTENT,
            WORLD_KEY => WORLD_CONTENT,
            _ => panic!("out-of-band setkey of a key with unknown content: {key}"),
        };
        let name = Path::new(file)
            .file_name()
            .unwrap_or_else(|| panic!("out-of-band file has no name: {file}"));
        let path = self.root.join(name);
        std::fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        let mut cmd = support::command_in("git", self.repo, self.home);
        cmd.args(["annex", "setkey", key]).arg(&path);
        support::run_ok(&mut cmd);
    }

    /// `after session: B has <key> = True/False`, checked with `git annex contentlocation`.
    fn check_final_state(&self, t: &Transcript) {
        for (key, expected) in &t.setup.final_state {
            let out = support::command_in("git", self.repo, self.home)
                .args(["annex", "contentlocation", key])
                .output()
                .unwrap_or_else(|e| panic!("cannot run git annex contentlocation: {e}"));
            let present = out.status.success();
            assert_eq!(
                present,
                *expected,
                "[{}] {}: after the session B {} {key}, the transcript says it {}",
                self.label,
                t.name,
                if present { "has" } else { "does not have" },
                if *expected { "has" } else { "does not" }
            );
        }
    }

    fn fail(&self, t: &Transcript, conns: &[Option<Conn>], at: &str, msg: &str) -> ! {
        let mut stderr = String::new();
        for (spec, conn) in t.conns.iter().zip(conns) {
            if let Some(conn) = conn {
                let text = conn.stderr_text();
                if !text.is_empty() {
                    stderr.push_str(&format!("\n  [{}] {}", spec.tag, text.trim_end()));
                }
            }
        }
        panic!(
            "[{}] {} differs {at}:\n  {msg}\nserver stderr:{}",
            self.label,
            t.name,
            if stderr.is_empty() {
                " (empty)".to_string()
            } else {
                stderr
            }
        );
    }
}

enum ToWriter {
    Data(Vec<u8>),
    Close,
}

struct Conn {
    tag: String,
    child: Child,
    to_writer: mpsc::Sender<ToWriter>,
    from_writer: mpsc::Receiver<io::Result<()>>,
    /// Chunks of stdout; an empty chunk is EOF.
    from_reader: mpsc::Receiver<io::Result<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Received and not yet consumed.
    buf: Vec<u8>,
    eof: bool,
    stdin_closed: bool,
    /// A write failed with EPIPE (the server closed its stdin).
    broken_pipe: bool,
    finished: bool,
    /// (recorded, ours) from the last `TIMESTAMP` reply.
    timestamp: Option<(i64, i64)>,
}

impl Conn {
    fn new(tag: String, mut child: Child) -> Conn {
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");

        let (to_writer, writer_rx) = mpsc::channel();
        let (writer_tx, from_writer) = mpsc::channel();
        thread::spawn(move || writer_thread(stdin, writer_rx, writer_tx));

        let (reader_tx, from_reader) = mpsc::channel();
        thread::spawn(move || reader_thread(stdout, reader_tx));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut all) = sink.lock() {
                    all.extend_from_slice(&chunk[..n]);
                }
            }
        });

        Conn {
            tag,
            child,
            to_writer,
            from_writer,
            from_reader,
            stderr,
            buf: Vec::new(),
            eof: false,
            stdin_closed: false,
            broken_pipe: false,
            finished: false,
            timestamp: None,
        }
    }

    fn stderr_text(&self) -> String {
        match self.stderr.lock() {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => "(stderr collector panicked)".to_string(),
        }
    }

    /// `REMOVE-BEFORE <t> <key>` is relative to the recorded `TIMESTAMP`: shift it by the
    /// difference between our server's `TIMESTAMP` and the recorded one.
    fn rewrite_remove_before(&self, bytes: &[u8]) -> Vec<u8> {
        let Some((recorded, ours)) = self.timestamp else {
            return bytes.to_vec();
        };
        let Some(rest) = bytes.strip_prefix(b"REMOVE-BEFORE ") else {
            return bytes.to_vec();
        };
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            return bytes.to_vec();
        };
        let Some(t) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        else {
            return bytes.to_vec();
        };
        let mut out = format!("REMOVE-BEFORE {}", ours + (t - recorded)).into_bytes();
        out.extend_from_slice(&rest[space..]);
        out
    }

    fn write(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        if self.stdin_closed {
            return Err("transcript writes after closing stdin".to_string());
        }
        self.to_writer
            .send(ToWriter::Data(bytes))
            .map_err(|_| "writer thread is gone".to_string())?;
        match self.from_writer.recv_timeout(REPLY_TIMEOUT) {
            Ok(Ok(())) => Ok(()),
            // The server closed its stdin. The recorder saw this too after EOF (`(write
            // failed: broken pipe)`); whether it happens is a race with the server's exit,
            // so it is not an error by itself: any consequence shows in the replies.
            Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.broken_pipe = true;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("writing to the server failed: {e}")),
            Err(_) => Err(format!(
                "the server did not read its stdin within {REPLY_TIMEOUT:?}"
            )),
        }
    }

    fn close_stdin(&mut self) -> Result<(), String> {
        if self.stdin_closed {
            return Ok(());
        }
        self.stdin_closed = true;
        self.to_writer
            .send(ToWriter::Close)
            .map_err(|_| "writer thread is gone".to_string())?;
        match self.from_writer.recv_timeout(REPLY_TIMEOUT) {
            Ok(_) => Ok(()),
            Err(_) => Err("closing stdin did not complete".to_string()),
        }
    }

    /// Receives one more chunk from stdout before `deadline`; false on timeout.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.from_reader.recv_timeout(wait) {
            Ok(Ok(chunk)) if chunk.is_empty() => {
                self.eof = true;
                true
            }
            Ok(Ok(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                true
            }
            // A read error or a vanished reader thread: treat like EOF.
            Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.eof = true;
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }

    /// Reads `n` bytes, or (with `line`) up to and including the first `\n` within `n` bytes.
    /// On EOF or timeout returns what there is, and why it is short.
    fn read(&mut self, n: usize, line: bool) -> (Vec<u8>, Option<String>) {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let limit = self.buf.len().min(n);
            let end = if line {
                self.buf[..limit]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|p| p + 1)
            } else {
                None
            };
            let end = end.or((self.buf.len() >= n).then_some(n));
            if let Some(end) = end {
                return (self.buf.drain(..end).collect(), None);
            }
            if self.eof {
                let why = if self.broken_pipe {
                    "the server closed stdout (EOF; an earlier write got EPIPE)"
                } else {
                    "the server closed stdout (EOF)"
                };
                return (std::mem::take(&mut self.buf), Some(why.to_string()));
            }
            if !self.fill(deadline) {
                return (
                    std::mem::take(&mut self.buf),
                    Some(format!("no more output within {REPLY_TIMEOUT:?}")),
                );
            }
        }
    }

    /// Whatever else the server sends shortly after a mismatch, for the message.
    fn trailing_output(&mut self) -> String {
        let deadline = Instant::now() + GRACE;
        while self.fill(deadline) && !self.eof {}
        let extra = std::mem::take(&mut self.buf);
        let eof = if self.eof { ", then EOF" } else { "" };
        if extra.is_empty() {
            format!("(nothing more{eof})")
        } else {
            format!("{}{eof}", show(&extra))
        }
    }

    fn expect(&mut self, expect: &Expect) -> Result<(), String> {
        match expect {
            Expect::Line(want) | Expect::Bytes(want) => {
                let line = matches!(expect, Expect::Line(_));
                let (got, why) = self.read(want.len(), line);
                if got == *want {
                    return Ok(());
                }
                let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
                let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
                let diff = if got.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; first difference at byte {at}: expected {} got {}",
                        show(&want[at.min(want.len())..]),
                        show(&got[at.min(got.len())..]),
                    )
                };
                let more = self.trailing_output();
                Err(format!(
                    "expected {} but got {}{why}{diff}; the server then sent {more}",
                    show(want),
                    show(&got),
                ))
            }
            Expect::Timestamp(recorded) => {
                let (got, why) = self.read(64, true);
                let ours = std::str::from_utf8(&got)
                    .ok()
                    .and_then(|s| s.strip_prefix("TIMESTAMP "))
                    .and_then(|s| s.strip_suffix('\n'))
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<i64>().ok());
                match ours {
                    Some(ours) => {
                        self.timestamp = Some((*recorded, ours));
                        Ok(())
                    }
                    None => {
                        let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
                        let more = self.trailing_output();
                        Err(format!(
                            "expected b'TIMESTAMP <n>\\n' but got {}{why}; the server then sent \
                             {more}",
                            show(&got)
                        ))
                    }
                }
            }
            Expect::Eof => {
                let deadline = Instant::now() + REPLY_TIMEOUT;
                while !self.eof && self.buf.is_empty() {
                    if !self.fill(deadline) {
                        return Err(format!(
                            "expected EOF but the server kept stdout open for {REPLY_TIMEOUT:?}"
                        ));
                    }
                }
                if self.buf.is_empty() {
                    return Ok(());
                }
                let got = std::mem::take(&mut self.buf);
                let more = self.trailing_output();
                Err(format!(
                    "expected EOF but got {}; the server then sent {more}",
                    show(&got)
                ))
            }
        }
    }

    fn wait(&mut self) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    return Err(format!(
                        "[{}] the server did not exit within {REPLY_TIMEOUT:?} after EOF and \
                         closed stdin",
                        self.tag
                    ));
                }
                Err(e) => return Err(format!("waiting for the server failed: {e}")),
            }
        }
    }

    /// Waits for the server to exit and compares its exit status (zero / non-zero).
    fn finish(&mut self, expected_code: i32) -> Result<(), String> {
        let status = self.wait()?;
        self.finished = true;
        if status.success() != (expected_code == 0) {
            return Err(format!(
                "the server exited with {status}, the transcript's server exited with code \
                 {expected_code}"
            ));
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.finished {
            // Only the process group this harness created for this server, by its id. The
            // leader is not reaped yet, so the id cannot have been reused.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn writer_thread(
    mut stdin: ChildStdin,
    rx: mpsc::Receiver<ToWriter>,
    tx: mpsc::Sender<io::Result<()>>,
) {
    while let Ok(msg) = rx.recv() {
        match msg {
            ToWriter::Data(bytes) => {
                let result = stdin.write_all(&bytes).and_then(|()| stdin.flush());
                if tx.send(result).is_err() {
                    return;
                }
            }
            ToWriter::Close => {
                drop(stdin);
                let _ = tx.send(Ok(()));
                return;
            }
        }
    }
}

fn reader_thread(mut stdout: std::process::ChildStdout, tx: mpsc::Sender<io::Result<Vec<u8>>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match stdout.read(&mut chunk) {
            Ok(0) => {
                let _ = tx.send(Ok(Vec::new()));
                return;
            }
            Ok(n) => {
                if tx.send(Ok(chunk[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

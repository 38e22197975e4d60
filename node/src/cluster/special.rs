//! Special remotes as cluster nodes (annex-spec §4.10, §9): a `directory`
//! special remote (written directly, in git-annex's layout
//! `<dir>/<hashDirLower>/<keyFile>/<keyFile>`, mixed-case hash directories
//! also read), and an external special remote program `git-annex-remote-NAME`
//! spoken to over its line protocol (one process per gateway session).
//!
//! A gateway PUT streams into a directory remote as the bytes arrive
//! ([`DirUpload`]: a temp file inside the directory, renamed into place once
//! the gateway's check passes), and a GET reads its file in place. An external
//! remote's `TRANSFER STORE`/`RETRIEVE` needs a file, so for external remotes
//! only the gateway keeps a spool file under `annex/tmp/annexmesh-gateway`,
//! written as the bytes arrive (not after) and handed over once checked.
//!
//! All calls block; the gateway runs them as it runs local stores. An
//! external program must answer a request within the node's reply deadline
//! (`annexmesh.replytimeout`); during a `TRANSFER` any line it sends
//! (`PROGRESS`) counts, and the wait between two is the stall rule's period
//! (`annex.stalldetection`). A program that misses one is stopped.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use protocol::deadline::{NodeDeadlines, StallRule};
use protocol::{Key, Uuid};

use crate::error::{Error, IoContext, Result};

/// What kind of special remote a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Special {
    /// `type=directory`: `remote.<r>.annex-directory`.
    Directory(PathBuf),
    /// `type=external`: `git-annex-remote-<externaltype>` on PATH, with the
    /// remote's configuration from `remote.log` (for `GETCONFIG`).
    External {
        externaltype: String,
        config: BTreeMap<String, String>,
        /// The gateway's git directory (`GETGITDIR`).
        git_dir: PathBuf,
        remote: String,
    },
}

/// The newest `remote.log` line of `uuid`, as `key=value` pairs.
pub fn remote_log_config(remote_log: &str, uuid: &Uuid) -> BTreeMap<String, String> {
    let mut best: Option<(f64, BTreeMap<String, String>)> = None;
    for line in remote_log.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some(uuid.as_str()) {
            continue;
        }
        let fields: BTreeMap<String, String> = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let ts = fields
            .get("timestamp")
            .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok())
            .unwrap_or(0.0);
        if best.as_ref().is_none_or(|(b, _)| ts >= *b) {
            best = Some((ts, fields));
        }
    }
    best.map(|(_, f)| f).unwrap_or_default()
}

/// A special-remote node of a gateway session.
pub struct SpecialNode {
    pub uuid: Uuid,
    pub remote: String,
    pub special: Special,
    /// Its cost for GETs (see [`crate::cluster::Cost`]).
    pub cost: crate::cluster::Cost,
    pub deadlines: NodeDeadlines,
    external: std::sync::Mutex<Option<External>>,
}

impl Clone for SpecialNode {
    fn clone(&self) -> Self {
        SpecialNode::new(self.uuid.clone(), self.remote.clone(), self.special.clone())
            .with_cost(self.cost)
            .with_deadlines(self.deadlines)
    }
}

impl std::fmt::Debug for SpecialNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpecialNode")
            .field("uuid", &self.uuid)
            .field("remote", &self.remote)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

fn dir_paths(dir: &Path, key: &Key) -> [PathBuf; 2] {
    let file = key.file();
    [
        dir.join(key.hash_dir_lower()).join(&file).join(&file),
        dir.join(key.hash_dir_mixed()).join(&file).join(&file),
    ]
}

impl SpecialNode {
    pub fn new(uuid: Uuid, remote: String, special: Special) -> SpecialNode {
        let cost = match &special {
            Special::Directory(_) => crate::cluster::Cost::CHEAP,
            Special::External { .. } => crate::cluster::Cost::EXPENSIVE,
        };
        SpecialNode {
            uuid,
            remote,
            special,
            cost,
            deadlines: NodeDeadlines::default(),
            external: std::sync::Mutex::new(None),
        }
    }

    pub fn with_cost(mut self, cost: crate::cluster::Cost) -> SpecialNode {
        self.cost = cost;
        self
    }

    pub fn with_deadlines(mut self, deadlines: NodeDeadlines) -> SpecialNode {
        self.deadlines = deadlines;
        self
    }

    /// Runs `f` on the external program, started (and prepared) if needed; a
    /// failed call stops it.
    fn with_external<T>(&self, f: impl FnOnce(&mut External) -> Result<T>) -> Result<T> {
        let Special::External {
            externaltype,
            config,
            git_dir,
            remote,
        } = &self.special
        else {
            return Err(Error::Protocol("not an external special remote".into()));
        };
        let mut guard = self
            .external
            .lock()
            .map_err(|_| Error::Protocol("external remote lock poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(External::start(
                externaltype,
                config.clone(),
                &self.uuid,
                git_dir,
                remote,
                self.deadlines,
            )?);
        }
        let Some(ext) = guard.as_mut() else {
            return Err(Error::Protocol("no external remote".into()));
        };
        let r = f(ext);
        if r.is_err() {
            *guard = None;
        }
        r
    }

    pub fn contains(&self, key: &Key) -> Result<bool> {
        match &self.special {
            Special::Directory(dir) => Ok(dir_paths(dir, key).iter().any(|p| p.is_file())),
            Special::External { .. } => self.with_external(|e| e.check_present(key)),
        }
    }

    /// Stores verified content from `source`.
    pub fn store(&self, key: &Key, source: &Path) -> Result<bool> {
        match &self.special {
            Special::Directory(dir) => {
                if self.contains(key)? {
                    return Ok(true);
                }
                let file = key.file();
                let tmp_dir = dir.join("tmp").join(&file);
                fs::create_dir_all(&tmp_dir)
                    .context(|| format!("creating {}", tmp_dir.display()))?;
                let tmp = tmp_dir.join(&file);
                fs::copy(source, &tmp).context(|| format!("writing {}", tmp.display()))?;
                fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .context(|| format!("fsync {}", tmp.display()))?;
                let [dest, _] = dir_paths(dir, key);
                let key_dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
                if let Some(hash_dir) = key_dir.parent() {
                    fs::create_dir_all(hash_dir)
                        .context(|| format!("creating {}", hash_dir.display()))?;
                }
                fs::rename(&tmp_dir, &key_dir)
                    .context(|| format!("moving to {}", key_dir.display()))?;
                Ok(true)
            }
            Special::External { .. } => self.with_external(|e| e.transfer("STORE", key, source)),
        }
    }

    /// A directory special remote's upload, streamed into
    /// `<dir>/tmp/<keyFile>/<keyFile>` (git-annex's own temp location for
    /// it) and moved into place by [`DirUpload::commit`]. `None` for other
    /// kinds of special remote.
    pub fn begin_dir_upload(&self, key: &Key) -> Result<Option<DirUpload>> {
        let Special::Directory(dir) = &self.special else {
            return Ok(None);
        };
        let file = key.file();
        let tmp_dir = dir.join("tmp").join(&file);
        fs::create_dir_all(&tmp_dir).context(|| format!("creating {}", tmp_dir.display()))?;
        let tmp = tmp_dir.join(&file);
        let out = fs::File::create(&tmp).context(|| format!("creating {}", tmp.display()))?;
        Ok(Some(DirUpload {
            dir: dir.clone(),
            key: key.clone(),
            tmp_dir,
            tmp,
            out: Some(out),
        }))
    }

    /// A directory special remote's content file, opened for reading in
    /// place, with its size. `None` if absent or not a directory remote.
    pub fn open_dir_content(&self, key: &Key) -> Result<Option<(fs::File, u64)>> {
        let Special::Directory(dir) = &self.special else {
            return Ok(None);
        };
        let Some(path) = dir_paths(dir, key).into_iter().find(|p| p.is_file()) else {
            return Ok(None);
        };
        let f = fs::File::open(&path).context(|| format!("opening {}", path.display()))?;
        let len = f
            .metadata()
            .context(|| format!("stat {}", path.display()))?
            .len();
        Ok(Some((f, len)))
    }

    /// Fetches the content into `dest` (unverified: the caller's client
    /// verifies, as git-annex's gateway leaves it to the client).
    pub fn retrieve(&self, key: &Key, dest: &Path) -> Result<bool> {
        match &self.special {
            Special::Directory(dir) => {
                let Some(src) = dir_paths(dir, key).into_iter().find(|p| p.is_file()) else {
                    return Ok(false);
                };
                fs::copy(&src, dest).context(|| format!("reading {}", src.display()))?;
                Ok(true)
            }
            Special::External { .. } => self.with_external(|e| e.transfer("RETRIEVE", key, dest)),
        }
    }

    /// Removes the content; absent content counts as removed.
    pub fn remove(&self, key: &Key) -> Result<bool> {
        match &self.special {
            Special::Directory(dir) => {
                for p in dir_paths(dir, key) {
                    if p.is_file() {
                        fs::remove_file(&p).context(|| format!("removing {}", p.display()))?;
                        if let Some(kd) = p.parent() {
                            let _ = fs::remove_dir(kd);
                        }
                    }
                }
                Ok(true)
            }
            Special::External { .. } => self.with_external(|e| e.remove(key)),
        }
    }
}

/// An upload to a directory special remote in progress; dropped without
/// [`DirUpload::commit`], its temp directory is removed.
pub struct DirUpload {
    dir: PathBuf,
    key: Key,
    tmp_dir: PathBuf,
    tmp: PathBuf,
    out: Option<fs::File>,
}

impl DirUpload {
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Err(Error::Protocol("upload already finished".into()));
        };
        out.write_all(bytes)
            .context(|| format!("writing {}", self.tmp.display()))
    }

    /// Fsyncs the content and renames its temp directory into place as the
    /// key's directory (`<hashDirLower>/<keyFile>`), then fsyncs the parent.
    pub fn commit(mut self) -> Result<()> {
        let Some(out) = self.out.take() else {
            return Err(Error::Protocol("upload already finished".into()));
        };
        let r = self.finish(out);
        if r.is_err() {
            let _ = fs::remove_dir_all(&self.tmp_dir);
        }
        r
    }

    fn finish(&self, out: fs::File) -> Result<()> {
        out.sync_all()
            .context(|| format!("fsync {}", self.tmp.display()))?;
        drop(out);
        let [dest, _] = dir_paths(&self.dir, &self.key);
        let key_dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        let hash_dir = key_dir.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&hash_dir).context(|| format!("creating {}", hash_dir.display()))?;
        if dest.is_file() {
            // Another upload got there first: same key, same content.
            let _ = fs::remove_dir_all(&self.tmp_dir);
            return Ok(());
        }
        fs::rename(&self.tmp_dir, &key_dir)
            .context(|| format!("moving to {}", key_dir.display()))?;
        fs::File::open(&hash_dir)
            .and_then(|d| d.sync_all())
            .context(|| format!("fsync {}", hash_dir.display()))?;
        Ok(())
    }
}

impl Drop for DirUpload {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

/// A running `git-annex-remote-NAME`.
struct External {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    config: BTreeMap<String, String>,
    uuid: Uuid,
    git_dir: PathBuf,
    remote: String,
    deadlines: NodeDeadlines,
    line: Vec<u8>,
}

/// How long [`External::reply`] waits.
#[derive(Clone, Copy)]
enum Wait {
    /// For the reply as a whole.
    Reply,
    /// For each line (a transfer's `PROGRESS`).
    EachLine,
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Longest line accepted from an external program.
const MAX_LINE: usize = 1 << 20;

impl External {
    fn start(
        externaltype: &str,
        config: BTreeMap<String, String>,
        uuid: &Uuid,
        git_dir: &Path,
        remote: &str,
        deadlines: NodeDeadlines,
    ) -> Result<External> {
        let program = format!("git-annex-remote-{externaltype}");
        External::spawn(
            Command::new(&program),
            &program,
            config,
            uuid,
            git_dir,
            remote,
            deadlines,
        )
    }

    fn spawn(
        mut command: Command,
        program: &str,
        config: BTreeMap<String, String>,
        uuid: &Uuid,
        git_dir: &Path,
        remote: &str,
        deadlines: NodeDeadlines,
    ) -> Result<External> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context(|| format!("starting {program}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Protocol(format!("{program} has no pipes")));
        };
        let mut ext = External {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            config,
            uuid: uuid.clone(),
            git_dir: git_dir.to_owned(),
            remote: remote.to_owned(),
            deadlines,
            line: Vec::new(),
        };
        let first = ext.read(std::time::Instant::now() + deadlines.reply())?;
        if !first.starts_with("VERSION ") {
            return Err(Error::Protocol(format!(
                "{program}: expected VERSION, got {first:?}"
            )));
        }
        ext.send("EXTENSIONS INFO GETGITREMOTENAME")?;
        let _ = ext.reply(Wait::Reply, |l| {
            l.starts_with("EXTENSIONS") || l == "UNSUPPORTED-REQUEST"
        })?;
        ext.send("PREPARE")?;
        let r = ext.reply(Wait::Reply, |l| l.starts_with("PREPARE-"))?;
        if r != "PREPARE-SUCCESS" {
            return Err(Error::Protocol(format!("{program}: {r}")));
        }
        Ok(ext)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .context(|| "writing to external special remote".into())
    }

    /// The program's next line, which must come by `deadline`.
    fn read(&mut self, deadline: std::time::Instant) -> Result<String> {
        self.line.clear();
        loop {
            let buffered = self.stdout.buffer();
            if let Some(i) = buffered.iter().position(|&b| b == b'\n') {
                if self.line.len() + i > MAX_LINE {
                    return Err(Error::Protocol(
                        "over-long line from external special remote".into(),
                    ));
                }
                self.line.extend_from_slice(&buffered[..i]);
                self.stdout.consume(i + 1);
                return Ok(String::from_utf8_lossy(&self.line).into_owned());
            }
            let n = buffered.len();
            if self.line.len() + n > MAX_LINE {
                return Err(Error::Protocol(
                    "over-long line from external special remote".into(),
                ));
            }
            self.line.extend_from_slice(buffered);
            self.stdout.consume(n);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ready = crate::sys::wait_readable(self.stdout.get_ref(), left)
                .context(|| "waiting on external special remote".into())?;
            if !ready {
                return Err(Error::Node {
                    node: self.remote.clone(),
                    reason: "the external special remote stopped answering".into(),
                });
            }
            let got = self
                .stdout
                .fill_buf()
                .context(|| "reading from external special remote".into())?;
            if got.is_empty() {
                return Err(Error::Protocol("external special remote exited".into()));
            }
        }
    }

    /// Reads lines, answering the program's own requests, until `done` says
    /// a line is the reply.
    fn reply(&mut self, wait: Wait, done: impl Fn(&str) -> bool) -> Result<String> {
        let reply_by = std::time::Instant::now() + self.deadlines.reply();
        loop {
            let deadline = match (wait, self.deadlines.stall) {
                (Wait::Reply, _) => reply_by,
                (Wait::EachLine, StallRule::Rate { period_ms, .. }) => {
                    std::time::Instant::now() + std::time::Duration::from_millis(period_ms)
                }
                // No stall detection: a transfer may take as long as it takes.
                (Wait::EachLine, StallRule::Off) => {
                    std::time::Instant::now() + std::time::Duration::from_secs(24 * 3600)
                }
            };
            let line = self.read(deadline)?;
            if done(&line) {
                return Ok(line);
            }
            let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match cmd {
                "GETCONFIG" => {
                    let v = self.config.get(rest).cloned().unwrap_or_default();
                    self.send(&format!("VALUE {v}"))?;
                }
                "DIRHASH" | "DIRHASH-LOWER" => {
                    let key = Key::parse(rest)
                        .map_err(|e| Error::Protocol(format!("bad key {rest}: {e}")))?;
                    let h = if cmd == "DIRHASH" {
                        key.hash_dir_mixed()
                    } else {
                        key.hash_dir_lower()
                    };
                    self.send(&format!("VALUE {h}"))?;
                }
                "GETUUID" => {
                    let v = format!("VALUE {}", self.uuid);
                    self.send(&v)?;
                }
                "GETGITDIR" => {
                    let v = format!("VALUE {}", self.git_dir.display());
                    self.send(&v)?;
                }
                "GETGITREMOTENAME" => {
                    let v = format!("VALUE {}", self.remote);
                    self.send(&v)?;
                }
                "GETCREDS" => self.send("CREDS  ")?,
                "GETSTATE" | "GETWANTED" => self.send("VALUE ")?,
                "GETURLS" => self.send("VALUE ")?,
                "ERROR" => return Err(Error::Protocol(format!("external: {rest}"))),
                // PROGRESS, DEBUG, INFO, SETCONFIG, SETSTATE, SETURLPRESENT, …
                _ => {}
            }
        }
    }

    fn check_present(&mut self, key: &Key) -> Result<bool> {
        self.send(&format!("CHECKPRESENT {key}"))?;
        let r = self.reply(Wait::Reply, |l| l.starts_with("CHECKPRESENT-"))?;
        if r.starts_with("CHECKPRESENT-SUCCESS ") {
            Ok(true)
        } else if r.starts_with("CHECKPRESENT-FAILURE ") {
            Ok(false)
        } else {
            Err(Error::Protocol(r))
        }
    }

    fn transfer(&mut self, dir: &str, key: &Key, file: &Path) -> Result<bool> {
        self.send(&format!("TRANSFER {dir} {key} {}", file.display()))?;
        let r = self.reply(Wait::EachLine, |l| {
            l.starts_with("TRANSFER-SUCCESS ") || l.starts_with("TRANSFER-FAILURE ")
        })?;
        Ok(r.starts_with("TRANSFER-SUCCESS "))
    }

    fn remove(&mut self, key: &Key) -> Result<bool> {
        self.send(&format!("REMOVE {key}"))?;
        let r = self.reply(Wait::Reply, |l| {
            l.starts_with("REMOVE-SUCCESS ") || l.starts_with("REMOVE-FAILURE ")
        })?;
        Ok(r.starts_with("REMOVE-SUCCESS "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An external program from a shell script that answers the start-up
    /// and then runs `then`.
    fn external(then: &str, deadlines: NodeDeadlines) -> Result<External> {
        let script = format!(
            "echo VERSION 1; read l; echo UNSUPPORTED-REQUEST; read l; echo PREPARE-SUCCESS; read l; {then}"
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        External::spawn(
            cmd,
            "test remote",
            BTreeMap::new(),
            &Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap(),
            Path::new("/nonexistent"),
            "r",
            deadlines,
        )
    }

    fn key() -> Key {
        Key::parse("SHA256E-s1--0000000000000000000000000000000000000000000000000000000000000000")
            .unwrap()
    }

    #[test]
    fn a_silent_external_remote_misses_its_reply_deadline() {
        let quick = NodeDeadlines {
            stall: StallRule::default(),
            reply: Some(std::time::Duration::from_secs(1)),
        };
        let mut ok = external(&format!("echo CHECKPRESENT-SUCCESS {}", key()), quick).unwrap();
        assert!(ok.check_present(&key()).unwrap());
        let mut silent = external("exec sleep 600", quick).unwrap();
        let e = silent.check_present(&key()).unwrap_err();
        assert!(e.to_string().contains("stopped answering"), "{e}");
    }

    #[test]
    fn a_transfer_stalls_once_progress_stops() {
        let quick = NodeDeadlines {
            stall: StallRule::parse("1KB/1s").unwrap(),
            reply: Some(std::time::Duration::from_secs(1)),
        };
        // PROGRESS for longer than the reply deadline keeps a transfer going…
        let progress = "for i in 1 2 3 4 5 6 7 8; do echo PROGRESS $i; sleep 0.3; done";
        let mut ext = external(
            &format!("{progress}; echo TRANSFER-SUCCESS STORE {}", key()),
            quick,
        )
        .unwrap();
        assert!(
            ext.transfer("STORE", &key(), Path::new("/nonexistent"))
                .unwrap()
        );
        // …and when it stops, the transfer is given up.
        let mut ext = external(&format!("{progress}; exec sleep 600"), quick).unwrap();
        let e = ext
            .transfer("STORE", &key(), Path::new("/nonexistent"))
            .unwrap_err();
        assert!(e.to_string().contains("stopped answering"), "{e}");
    }
}

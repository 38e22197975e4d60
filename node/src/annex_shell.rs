//! `annexmesh annex-shell`: a stand-in for `git-annex-shell` with the same command
//! lines and environment (annex-spec §7), so stock git-annex uses annexmesh over
//! ssh exactly as it uses git-annex.
//!
//! ```text
//! annex-shell configlist DIR [-- fields --]
//! annex-shell p2pstdio DIR [--debug] CLIENT-UUID [--uuid UUID] [-- fields --]
//! annex-shell -c "<one of the above, shell-quoted>"
//! ```
//!
//! `GIT_ANNEX_SHELL_READONLY` and `GIT_ANNEX_SHELL_APPENDONLY` restrict what a
//! client may do; `GIT_ANNEX_SHELL_DIRECTORY` limits the repository served.

use std::path::{Path, PathBuf};

use protocol::Uuid;
use protocol::message::MAX_VERSION;
use protocol::server::{CloseReason, GitAccess, ServeMode, Server, ServerConfig, Start};

use crate::error::{Error, Result};
use crate::session::{ServeContext, serve};
use crate::store::Store;

/// A parsed `git-annex-shell` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellCommand {
    ConfigList {
        dir: String,
    },
    P2pStdio {
        dir: String,
        client: Option<String>,
        expected: Option<String>,
    },
}

/// Splits a command string the way `sh` would for the quoting git-annex uses:
/// single quotes, double quotes and backslashes.
pub fn split_shell_words(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err(Error::Usage("unterminated quote".into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err(Error::Usage("unterminated quote".into())),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err(Error::Usage("unterminated quote".into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(ch) = chars.next() {
                    cur.push(ch);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

impl ShellCommand {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> Result<ShellCommand> {
        if args.first().map(String::as_str) == Some("-c") {
            let Some(cmd) = args.get(1) else {
                return Err(Error::Usage("-c needs a command".into()));
            };
            let mut words = split_shell_words(cmd)?;
            // "git-annex-shell 'p2pstdio' …" as a login shell command.
            if words
                .first()
                .is_some_and(|w| w.ends_with("git-annex-shell"))
            {
                words.remove(0);
            }
            return ShellCommand::parse(&words);
        }
        let mut positional = Vec::new();
        let mut expected = None;
        let mut i = 0;
        let mut in_fields = false;
        while i < args.len() {
            let a = &args[i];
            if in_fields {
                if a == "--" {
                    in_fields = false;
                }
            } else if a == "--" {
                in_fields = true;
            } else if a == "--uuid" {
                i += 1;
                expected = args.get(i).cloned();
                if expected.is_none() {
                    return Err(Error::Usage("--uuid needs a value".into()));
                }
            } else if let Some(v) = a.strip_prefix("--uuid=") {
                expected = Some(v.to_owned());
            } else if a.starts_with("--") {
                // --debug, --quiet and future options: accepted, ignored.
            } else {
                positional.push(a.clone());
            }
            i += 1;
        }
        let mut positional = positional.into_iter();
        let command = positional
            .next()
            .ok_or_else(|| Error::Usage("missing command".into()))?;
        let dir = positional
            .next()
            .ok_or_else(|| Error::Usage("missing directory".into()))?;
        match command.as_str() {
            "configlist" => Ok(ShellCommand::ConfigList { dir }),
            "p2pstdio" => Ok(ShellCommand::P2pStdio {
                dir,
                client: positional.next(),
                expected,
            }),
            other => Err(Error::Usage(format!("unsupported command {other}"))),
        }
    }
}

/// `/~/x` and `/~user/x` name directories relative to a home directory.
pub fn resolve_dir(dir: &str, home: Option<&Path>) -> PathBuf {
    if let Some(rest) = dir.strip_prefix("/~/") {
        if let Some(h) = home {
            return h.join(rest);
        }
    } else if dir == "/~" {
        if let Some(h) = home {
            return h.to_path_buf();
        }
    } else if let Some(rest) = dir.strip_prefix("/~") {
        let (user, path) = rest.split_once('/').unwrap_or((rest, ""));
        return Path::new("/home").join(user).join(path);
    }
    PathBuf::from(dir)
}

/// The server mode git-annex-shell derives from its environment.
pub fn mode_from_env(get: impl Fn(&str) -> Option<String>) -> ServeMode {
    if get("GIT_ANNEX_SHELL_READONLY").is_some_and(|v| !v.is_empty()) {
        ServeMode::ReadOnly
    } else if get("GIT_ANNEX_SHELL_APPENDONLY").is_some_and(|v| !v.is_empty()) {
        ServeMode::AppendOnly
    } else {
        ServeMode::ReadWrite
    }
}

/// Opens the repository a command names, applying `GIT_ANNEX_SHELL_DIRECTORY`.
fn open_store(dir: &str) -> Result<Store> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let path = resolve_dir(dir, home.as_deref());
    if let Some(limit) = std::env::var_os("GIT_ANNEX_SHELL_DIRECTORY") {
        let want = std::fs::canonicalize(&limit).unwrap_or_else(|_| PathBuf::from(&limit));
        let got = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if want != got {
            return Err(Error::Usage(format!(
                "Only allowed to access {}",
                want.display()
            )));
        }
    }
    Store::open(&path).map_err(|e| match e {
        Error::NotARepository(_) | Error::NoUuid(_) => {
            Error::Usage("Not a git-annex or gcrypt repository.".into())
        }
        other => other,
    })
}

/// `configlist`: the lines git-annex reads to learn the repository's UUID.
pub fn configlist(dir: &str) -> Result<String> {
    let store = open_store(dir)?;
    Ok(format!("annex.uuid={}\ncore.gcrypt-id=\n", store.uuid()))
}

/// `p2pstdio`: serves one P2P session on stdin/stdout. Returns why it ended;
/// the caller maps protocol errors to a non-zero exit like git-annex-shell.
///
/// When the session ends, however it ends, every journal it wrote (the
/// repository's, a gateway's records of its nodes, local nodes' own) is
/// committed to its `git-annex` branch, as git-annex-shell does, so a `git
/// fetch` or `git clone` of the repository carries what the session changed.
/// A session killed midway leaves its journal for the next one or a daemon.
pub async fn p2pstdio(
    dir: &str,
    client: Option<&str>,
    expected: Option<&str>,
) -> Result<CloseReason> {
    let served = serve_p2pstdio(dir, client, expected).await;
    crate::session::record_state("annexmesh annex-shell: record changes").await;
    served
}

async fn serve_p2pstdio(
    dir: &str,
    client: Option<&str>,
    expected: Option<&str>,
) -> Result<CloseReason> {
    let store = open_store(dir)?;
    if client.is_none() {
        return Err(Error::Usage("missing UUID parameter".into()));
    }
    let mode = mode_from_env(|k| std::env::var(k).ok());
    if let Some(want) = expected
        && want != store.uuid().as_str()
    {
        // A gateway serves its clusters and the nodes it proxies (annex-spec §4.4).
        match crate::cluster::resolve(&store, want) {
            Ok(Some(crate::cluster::Served::Cluster {
                uuid,
                nodes,
                routes,
            })) => {
                let gateway = crate::gateway::Gateway {
                    cluster: uuid,
                    gateway: &store,
                    nodes,
                    mode,
                    auth: None,
                    routes,
                };
                let (reader, writer) = stdio();
                return gateway.serve(reader, writer).await;
            }
            Ok(Some(crate::cluster::Served::Node(node))) => {
                let (reader, writer) = stdio();
                return crate::proxy::serve_node(*node, &store, mode, None, None, reader, writer)
                    .await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("reading cluster configuration: {e}"),
        }
        return Err(Error::Usage(format!(
            "expected repository UUID {want} but found UUID {}",
            store.uuid()
        )));
    }
    let server = Server::new(ServerConfig {
        uuid: store.uuid().clone(),
        start: Start::Preauthenticated { mode },
        git: GitAccess::Refused,
        max_version: i64::from(MAX_VERSION),
    });
    let (reader, writer) = stdio();
    serve(server, reader, writer, &store, &ServeContext::default()).await
}

/// Pipe size asked for stdin/stdout (the default 64 KiB costs a wake-up per 64 KiB).
const PIPE_SIZE: usize = 1 << 20;

type BoxedReader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type BoxedWriter = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// stdin/stdout for a session. When they are pipes (as under ssh) they are
/// enlarged and used non-blocking through the reactor; otherwise tokio's
/// blocking-thread stdio is used.
fn stdio() -> (BoxedReader, BoxedWriter) {
    use std::os::fd::AsFd;
    let reader: BoxedReader = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| {
            crate::sys::grow_pipe(&fd, PIPE_SIZE);
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()
        })
        .map_or_else(
            || Box::new(tokio::io::stdin()) as BoxedReader,
            |r| Box::new(r),
        );
    let writer: BoxedWriter = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| {
            crate::sys::grow_pipe(&fd, PIPE_SIZE);
            tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok()
        })
        .map_or_else(
            || Box::new(tokio::io::stdout()) as BoxedWriter,
            |w| Box::new(w),
        );
    (reader, writer)
}

/// Whether git-annex-shell would exit non-zero after a session that ended so.
pub fn failed(reason: &CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::ProtocolError(_) | CloseReason::Unsupported(_)
    )
}

/// Parses a client UUID argument (for logging and future transfer logs).
pub fn client_uuid(arg: &str) -> Option<Uuid> {
    Uuid::parse(arg).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_git_annex_command_lines() {
        assert_eq!(
            ShellCommand::parse(&args(&[
                "p2pstdio", "/r", "--debug", "aaaa", "--uuid", "bbbb"
            ]))
            .unwrap(),
            ShellCommand::P2pStdio {
                dir: "/r".into(),
                client: Some("aaaa".into()),
                expected: Some("bbbb".into())
            }
        );
        assert_eq!(
            ShellCommand::parse(&args(&["configlist", "/~/annex", "--", "autoinit=1", "--"]))
                .unwrap(),
            ShellCommand::ConfigList {
                dir: "/~/annex".into()
            }
        );
        assert_eq!(
            ShellCommand::parse(&args(&["p2pstdio", "/r", "--uuid", "bbbb"])).unwrap(),
            ShellCommand::P2pStdio {
                dir: "/r".into(),
                client: None,
                expected: Some("bbbb".into())
            }
        );
        assert_eq!(
            ShellCommand::parse(&args(&[
                "-c",
                "git-annex-shell 'p2pstdio' '/a b/it'\"'\"'s' 'cccc'"
            ]))
            .unwrap(),
            ShellCommand::P2pStdio {
                dir: "/a b/it's".into(),
                client: Some("cccc".into()),
                expected: None
            }
        );
        assert!(ShellCommand::parse(&args(&["sendkey", "/r"])).is_err());
        assert!(ShellCommand::parse(&args(&["p2pstdio"])).is_err());
        assert!(ShellCommand::parse(&args(&["-c", "'unterminated"])).is_err());
    }

    #[test]
    fn home_relative_directories() {
        let home = Path::new("/home/me");
        assert_eq!(
            resolve_dir("/~/annex", Some(home)),
            PathBuf::from("/home/me/annex")
        );
        assert_eq!(
            resolve_dir("/~bob/x", Some(home)),
            PathBuf::from("/home/bob/x")
        );
        assert_eq!(resolve_dir("/srv/r", Some(home)), PathBuf::from("/srv/r"));
    }

    #[test]
    fn modes_from_env() {
        assert_eq!(mode_from_env(|_| None), ServeMode::ReadWrite);
        assert_eq!(
            mode_from_env(|k| (k == "GIT_ANNEX_SHELL_APPENDONLY").then(|| "1".into())),
            ServeMode::AppendOnly
        );
        assert_eq!(
            mode_from_env(|k| (k != "X").then(|| "1".into())),
            ServeMode::ReadOnly
        );
    }
}

//! P2P sessions with a child process: our client against `git-annex-shell
//! p2pstdio` (or anything that speaks the protocol on stdin/stdout).

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::error::{Error, IoContext, Result};
use crate::session::ClientSession;

/// A running `git-annex-shell p2pstdio` (or compatible) and a client session on it.
pub struct ShellConnection {
    pub session: ClientSession<ChildStdout, ChildStdin>,
    child: Child,
}

impl ShellConnection {
    /// Starts `program p2pstdio <repo> <client-uuid> [--uuid <expected>]` and reads
    /// its unprompted `AUTH-SUCCESS`, checking the UUID when one is expected.
    pub async fn start(
        program: &Path,
        repo: &Path,
        client: &protocol::Uuid,
        expected: Option<&protocol::Uuid>,
        envs: &[(&str, &str)],
    ) -> Result<(ShellConnection, protocol::Uuid)> {
        let mut cmd = Command::new(program);
        cmd.arg("p2pstdio").arg(repo).arg(client.as_str());
        if let Some(u) = expected {
            cmd.arg("--uuid").arg(u.as_str());
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::spawn(cmd, expected).await
    }

    /// Runs `cmd` (which starts a `p2pstdio` server, possibly through ssh) and
    /// reads its unprompted `AUTH-SUCCESS`, checking the UUID when one is expected.
    pub async fn spawn(
        mut cmd: Command,
        expected: Option<&protocol::Uuid>,
    ) -> Result<(ShellConnection, protocol::Uuid)> {
        let program = std::path::PathBuf::from(cmd.as_std().get_program());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .context(|| format!("starting {}", program.display()))?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            return Err(Error::Protocol("child has no pipes".into()));
        };
        crate::sys::grow_pipe(&stdout, 1 << 20);
        crate::sys::grow_pipe(&stdin, 1 << 20);
        let mut session = ClientSession::new(stdout, stdin);
        let uuid = session.expect_auth_success().await?;
        if let Some(want) = expected
            && &uuid != want
        {
            return Err(Error::Protocol(format!(
                "remote uuid {uuid} is not the expected {want}"
            )));
        }
        Ok((ShellConnection { session, child }, uuid))
    }

    /// Closes stdin and waits for the server to exit.
    pub async fn finish(self) -> Result<std::process::ExitStatus> {
        let ShellConnection { session, mut child } = self;
        session.close().await?;
        child
            .wait()
            .await
            .context(|| "waiting for p2pstdio server".into())
    }
}

//! `annexmesh api token`, and the command line as a client of the running
//! daemon's HTTP API (`node::api`): a small HTTP/1.1 client over loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use node::Repo;

#[derive(clap::Subcommand)]
pub enum ApiCommand {
    /// Print the bearer token (made when there is none).
    Token {
        /// Replace it with a new one (the daemon takes it at once).
        #[arg(long)]
        rotate: bool,
    },
}

pub fn command(path: &Path, action: ApiCommand) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(path)
        .with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))?;
    match action {
        ApiCommand::Token { rotate } => {
            println!("{}", node::api::token::ensure(&repo.git_dir, rotate)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `annexmesh graph`: the running daemon's `GET /health/graph`.
pub fn graph(path: &Path) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(path)
        .with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))?;
    let Some(client) = Client::find(&repo) else {
        bail!(
            "no daemon is running for {} (start `annexmesh daemon`): the graph is its view",
            repo.top.display()
        );
    };
    print!("{}", client.ok("GET", "/health/graph")?);
    Ok(ExitCode::SUCCESS)
}

/// The running daemon's API, as its `api` file names it.
pub struct Client {
    host: String,
    token: String,
}

/// Largest answer read.
const MAX_ANSWER: u64 = 256 << 20;

impl Client {
    /// The API of the daemon running for `repo`; `None` when none runs.
    pub fn find(repo: &Repo) -> Option<Client> {
        let text = std::fs::read_to_string(crate::daemon::api_file(repo)).ok()?;
        let host = text.trim().strip_prefix("http://")?.to_owned();
        let token = node::api::token::read(&repo.git_dir)?;
        // A file left by a daemon that died: nothing listens.
        let addr: std::net::SocketAddr = host.parse().ok()?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        Some(Client { host, token })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// One request; the status and the body.
    pub fn call(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        self.call_json(method, path, "")
    }

    /// One request with a JSON body (none when empty); the status and the
    /// body.
    pub fn call_json(&self, method: &str, path: &str, json: &str) -> anyhow::Result<(u16, String)> {
        let mut s = TcpStream::connect(&self.host)
            .with_context(|| format!("connecting to the daemon's API at {}", self.url()))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let kind = if json.is_empty() {
            ""
        } else {
            "Content-Type: application/json\r\n"
        };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             {kind}Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
            self.host,
            self.token,
            json.len()
        )?;
        let mut r = BufReader::new(s.take(MAX_ANSWER));
        let mut status = String::new();
        r.read_line(&mut status)?;
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad HTTP status line {status:?}"))?;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
            let l = h.to_ascii_lowercase();
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .with_context(|| format!("bad chunk size {size:?}"))?;
                if n == 0 {
                    break;
                }
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            r.read_to_end(&mut body)?;
        }
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A request that must succeed; its body.
    pub fn ok(&self, method: &str, path: &str) -> anyhow::Result<String> {
        let (code, body) = self.call(method, path)?;
        if !(200..300).contains(&code) {
            bail!("the daemon's API answered {code}: {}", body.trim());
        }
        Ok(body)
    }
}

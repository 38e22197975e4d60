//! Parsing a `p2p-*` / `v4-*` transcript into connections and an ordered list of events.
//!
//! The interleaved `C->S` / `S->C` lines give the ORDER of actions across connections; the
//! bytes of every item are taken from the item itself (`line` + `\n`, a DATA payload literal,
//! or a synthesised long line) and then checked against the complete raw byte streams at the
//! end of the file (`verify_raw`), so the replay sends and expects exactly the recorded bytes.

use super::pylit;
use std::collections::BTreeMap;

/// The fixed UUID of the server repository B in every transcript.
pub const B_UUID: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
/// `hello\n`
pub const HELLO_KEY: &str =
    "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt";
pub const HELLO_CONTENT: &[u8] = b"hello\n";
/// `world, this is a P2P test\n`
pub const WORLD_KEY: &str =
    "SHA256E-s26--808b73473846350b7de5ac8e0c3d12318d9da9fa5ad1e37d161b3dd640381043.txt";
pub const WORLD_CONTENT: &[u8] = b"world, this is a P2P test\n";

#[derive(Debug)]
pub struct Transcript {
    /// File name without `.txt`, e.g. `p2p-14-lock-blocks-remove`.
    pub name: String,
    /// Connections in order of their first appearance in the interleaved view.
    pub conns: Vec<ConnSpec>,
    /// All interleaved items, in time order.
    pub events: Vec<Event>,
    pub setup: Setup,
}

#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// `conn1`, `readonly`, ... or `""` for the single untagged connection.
    pub tag: String,
    /// The recorded command line, split on whitespace (`git-annex-shell p2pstdio ...`).
    pub argv: Vec<String>,
    /// Extra environment for this connection's server.
    pub env: Vec<(String, String)>,
    /// The recorded exit code of the server.
    pub exit_code: i32,
}

#[derive(Debug, Clone)]
pub struct Event {
    /// Index into `Transcript::conns`.
    pub conn: usize,
    pub action: Action,
    /// The transcript line this came from (for messages).
    pub line: String,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Write these bytes to the server's stdin.
    Send(Vec<u8>),
    Expect(Expect),
    /// `-- client closes stdin --`
    CloseStdin,
    /// `-- (out of band, ...) --`: the text inside the parentheses.
    OutOfBand(String),
    /// `(write failed: ...)`, `(no reply: ...)`: observations of the recorder, no action.
    Note,
}

#[derive(Debug, Clone)]
pub enum Expect {
    /// One protocol line, including its `\n`.
    Line(Vec<u8>),
    /// Exactly these bytes (a DATA payload).
    Bytes(Vec<u8>),
    /// `TIMESTAMP <n>`: any number matches; `n` is the recorded value.
    Timestamp(i64),
    /// The server closes stdout.
    Eof,
}

#[derive(Debug, Default)]
pub struct Setup {
    /// `in B: printf 'hello\n' > hello.txt; git annex add hello.txt; git commit`
    pub hello: bool,
    /// `in B: also world.txt`
    pub world: bool,
    /// `B has <key> = True/False` once the scenario is over.
    pub final_state: Vec<(String, bool)>,
}

/// What the raw-stream footer says about one connection.
#[derive(Default)]
struct Footer {
    command: Option<Vec<String>>,
    exit_code: Option<i32>,
    c2s: Option<Vec<u8>>,
    s2c: Option<Vec<u8>>,
}

pub fn parse(name: &str, text: &str) -> Result<Transcript, String> {
    let mut footers: BTreeMap<String, Footer> = BTreeMap::new();
    let mut setup_lines: Vec<(usize, String)> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    let mut body: Vec<(usize, String, String)> = Vec::new(); // (lineno, tag, rest)

    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        let ctx = |e: String| format!("{name}.txt line {lineno}: {e}");
        if line.trim().is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix("# ") {
            let (tag, rest) = split_tag(header);
            if let Some(cmd) = rest.strip_prefix("command: ") {
                slot(&mut footers, tag).command =
                    Some(cmd.split_whitespace().map(str::to_string).collect());
            } else if let Some(code) = rest.strip_prefix("server exit code: ") {
                let code = code
                    .trim()
                    .parse()
                    .map_err(|e| ctx(format!("bad exit code {code:?}: {e}")))?;
                slot(&mut footers, tag).exit_code = Some(code);
            } else if let Some(lit) = rest.strip_prefix("raw client->server bytes: ") {
                slot(&mut footers, tag).c2s = Some(whole_literal(lit).map_err(ctx)?);
            } else if let Some(lit) = rest.strip_prefix("raw server->client bytes: ") {
                slot(&mut footers, tag).s2c = Some(whole_literal(lit).map_err(ctx)?);
            } else if tag.is_empty()
                && let Some(setup) = rest.strip_prefix("setup: ")
            {
                setup_lines.push((lineno, setup.to_string()));
            }
            continue;
        }
        if line.starts_with('#') {
            continue; // verbatim stderr continuation lines and the like
        }
        let (tag, rest) = split_tag(line);
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_string());
        }
        body.push((lineno, tag.to_string(), rest.to_string()));
    }

    if tags.is_empty() {
        return Err(format!("{name}.txt: no interleaved C->S / S->C lines"));
    }

    let mut conns = Vec::new();
    for tag in &tags {
        let own = footers.get(tag.as_str());
        let untagged = footers.get("");
        let command = own
            .and_then(|f| f.command.clone())
            .or_else(|| untagged.and_then(|f| f.command.clone()))
            .ok_or_else(|| format!("{name}.txt: no `command:` line for connection [{tag}]"))?;
        let exit_code = own
            .and_then(|f| f.exit_code)
            .ok_or_else(|| format!("{name}.txt: no `server exit code:` for connection [{tag}]"))?;
        conns.push(ConnSpec {
            tag: tag.clone(),
            argv: command,
            env: Vec::new(),
            exit_code,
        });
    }

    let mut events = Vec::new();
    for (lineno, tag, rest) in &body {
        let conn = tags
            .iter()
            .position(|t| t == tag)
            .expect("every body tag was recorded");
        let action = parse_body_item(rest).map_err(|e| format!("{name}.txt line {lineno}: {e}"))?;
        events.push(Event {
            conn,
            action,
            line: if tag.is_empty() {
                rest.clone()
            } else {
                format!("[{tag}] {rest}")
            },
        });
    }

    let mut truncated: BTreeMap<String, usize> = BTreeMap::new();
    let setup = parse_setup(name, &setup_lines, &mut conns, &mut truncated)?;

    let t = Transcript {
        name: name.to_string(),
        conns,
        events,
        setup,
    };
    verify_raw(&t, &footers, &truncated)?;
    Ok(t)
}

fn slot<'a>(footers: &'a mut BTreeMap<String, Footer>, tag: &str) -> &'a mut Footer {
    footers.entry(tag.to_string()).or_default()
}

/// `[tag] rest` -> (`tag`, `rest`); no tag -> (`""`, whole).
fn split_tag(s: &str) -> (&str, &str) {
    if let Some(inner) = s.strip_prefix('[')
        && let Some(end) = inner.find("] ")
    {
        return (&inner[..end], &inner[end + 2..]);
    }
    ("", s)
}

fn whole_literal(s: &str) -> Result<Vec<u8>, String> {
    let (bytes, rest) = pylit::decode(s)?;
    if !rest.trim().is_empty() {
        return Err(format!("text after the literal: {rest:?}"));
    }
    Ok(bytes)
}

/// One interleaved item, without its `[tag] ` prefix. Also used for the deviation table.
pub fn parse_body_item(rest: &str) -> Result<Action, String> {
    if let Some(item) = rest.strip_prefix("C->S | ") {
        return Ok(Action::Send(parse_send(item)?));
    }
    if let Some(item) = rest.strip_prefix("S->C | ") {
        return Ok(Action::Expect(parse_expect(item)?));
    }
    if rest == "-- client closes stdin --" {
        return Ok(Action::CloseStdin);
    }
    if let Some(inner) = rest
        .strip_prefix("-- (out of band, ")
        .and_then(|r| r.strip_suffix(") --"))
    {
        return Ok(Action::OutOfBand(inner.to_string()));
    }
    if rest.starts_with("(write failed") || rest.starts_with("(no reply") {
        return Ok(Action::Note);
    }
    Err(format!("unrecognised interleaved line {rest:?}"))
}

fn parse_send(item: &str) -> Result<Vec<u8>, String> {
    if item.starts_with("<DATA payload ") {
        return parse_payload(item);
    }
    if let Some(spec) = item.strip_prefix("<one line of ") {
        // <one line of N bytes + '\n': b'HEAD' ... b'TAIL'>
        let (n, lits) = spec
            .split_once(" bytes + '\\n': ")
            .ok_or_else(|| format!("malformed long-line item {item:?}"))?;
        let n: usize = n
            .parse()
            .map_err(|e| format!("bad length in {item:?}: {e}"))?;
        let (head, rest) = pylit::decode(lits)?;
        let rest = rest
            .strip_prefix(" ... ")
            .ok_or_else(|| format!("malformed long-line item {item:?}"))?;
        let (tail, rest) = pylit::decode(rest)?;
        if rest != ">" {
            return Err(format!("malformed long-line item {item:?}"));
        }
        // The elided middle is the tail's (single, repeated) byte.
        let fill = *tail
            .first()
            .ok_or_else(|| format!("empty tail in {item:?}"))?;
        if tail.iter().any(|&b| b != fill) || head.len() + tail.len() > n {
            return Err(format!("cannot synthesise the middle of {item:?}"));
        }
        let mut line = head;
        line.resize(n, fill);
        line.push(b'\n');
        return Ok(line);
    }
    if item.starts_with('<') {
        return Err(format!("unsupported client item {item:?}"));
    }
    Ok(format!("{item}\n").into_bytes())
}

fn parse_expect(item: &str) -> Result<Expect, String> {
    if item == "<EOF>" {
        return Ok(Expect::Eof);
    }
    if item.starts_with("<DATA payload ") {
        return Ok(Expect::Bytes(parse_payload(item)?));
    }
    if item.starts_with('<') {
        return Err(format!("unsupported server item {item:?}"));
    }
    if let Some(n) = item.strip_prefix("TIMESTAMP ")
        && let Ok(n) = n.parse()
    {
        return Ok(Expect::Timestamp(n));
    }
    Ok(Expect::Line(format!("{item}\n").into_bytes()))
}

/// `<DATA payload N bytes> b'...'`
fn parse_payload(item: &str) -> Result<Vec<u8>, String> {
    let spec = item
        .strip_prefix("<DATA payload ")
        .ok_or_else(|| format!("not a payload item {item:?}"))?;
    let (n, lit) = spec
        .split_once(" bytes> ")
        .ok_or_else(|| format!("malformed payload item {item:?}"))?;
    let n: usize = n
        .parse()
        .map_err(|e| format!("bad payload length in {item:?}: {e}"))?;
    let bytes = whole_literal(lit)?;
    if bytes.len() != n {
        return Err(format!(
            "payload says {n} bytes but its literal has {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

fn parse_setup(
    name: &str,
    lines: &[(usize, String)],
    conns: &mut [ConnSpec],
    truncated: &mut BTreeMap<String, usize>,
) -> Result<Setup, String> {
    let mut setup = Setup::default();
    let mut saw_init = false;
    for (lineno, line) in lines {
        let err = |e: &str| format!("{name}.txt line {lineno}: {e}: {line:?}");
        if line.starts_with(&format!(
            "git init B; git config annex.uuid {B_UUID}; git annex init B"
        )) {
            saw_init = true;
        } else if line
            .starts_with("in B: printf 'hello\\n' > hello.txt; git annex add hello.txt; git commit")
        {
            setup.hello = true;
        } else if line.starts_with("in B: also world.txt") {
            if !line.contains(WORLD_KEY) {
                return Err(err("world.txt with an unexpected key"));
            }
            setup.world = true;
        } else if line.contains(" env ") {
            // conn1 env GIT_ANNEX_SHELL_READONLY=1; conn2 env GIT_ANNEX_SHELL_APPENDONLY=1
            for part in line.split(';') {
                let (who, assignment) = part
                    .trim()
                    .split_once(" env ")
                    .ok_or_else(|| err("unrecognised env setup"))?;
                let (var, value) = assignment
                    .split_once('=')
                    .ok_or_else(|| err("env setup without `=`"))?;
                let idx = conn_ref(conns, who).ok_or_else(|| err("unknown connection"))?;
                conns[idx].env.push((var.to_string(), value.to_string()));
            }
        } else if let Some(rest) = line.strip_prefix('[') {
            // [len32766] raw c2s stream below is cut to its first 4096 of 32871 bytes
            let (tag, what) = rest
                .split_once("] raw c2s stream below is cut to its first ")
                .ok_or_else(|| err("unrecognised setup line"))?;
            let total = what
                .split_whitespace()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| err("unparseable truncation note"))?;
            truncated.insert(tag.to_string(), total);
        } else if let Some(when) = ["after session: ", "after: ", "at the end: "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .or_else(|| {
                // `after connN: ...` describes the end state only for the last connection.
                let last = format!("after conn{}: ", conns.len());
                line.strip_prefix(last.as_str())
            })
        {
            if let Some(state) = when.strip_prefix("B has ") {
                let (key, value) = state
                    .split_once(" = ")
                    .ok_or_else(|| err("unparseable `B has` note"))?;
                let key = if key == "hello" { HELLO_KEY } else { key };
                let present = match value.trim() {
                    "True" => true,
                    "False" => false,
                    _ => return Err(err("`B has` note is neither True nor False")),
                };
                setup.final_state.push((key.to_string(), present));
            } else {
                return Err(err("unrecognised end-state note"));
            }
        } else if line.starts_with("after conn")
            || line.starts_with("while ")
            || line.starts_with("uptime-ish check")
        {
            // Observations in the middle of a scenario (temp-file layout, lock held), or of
            // the recording machine: not checked.
        } else {
            return Err(err("unrecognised setup line (teach parse_setup about it)"));
        }
    }
    if !saw_init {
        return Err(format!("{name}.txt: no `git init B ...` setup line"));
    }
    Ok(setup)
}

/// `conn2` -> the connection tagged `conn2`, else the second connection.
fn conn_ref(conns: &[ConnSpec], who: &str) -> Option<usize> {
    if let Some(i) = conns.iter().position(|c| c.tag == who) {
        return Some(i);
    }
    let n: usize = who.strip_prefix("conn")?.parse().ok()?;
    (1..=conns.len()).contains(&n).then(|| n - 1)
}

/// The bytes of all `Send` items (resp. expected replies) of each connection, concatenated,
/// must be the recorded raw stream (or, when the recorder cut it, extend its prefix to the
/// recorded total length).
fn verify_raw(
    t: &Transcript,
    footers: &BTreeMap<String, Footer>,
    truncated: &BTreeMap<String, usize>,
) -> Result<(), String> {
    for (idx, conn) in t.conns.iter().enumerate() {
        let footer = footers
            .get(conn.tag.as_str())
            .ok_or_else(|| format!("{}.txt: no raw streams for [{}]", t.name, conn.tag))?;
        let mut sent = Vec::new();
        let mut received = Vec::new();
        for ev in t.events.iter().filter(|e| e.conn == idx) {
            match &ev.action {
                Action::Send(b) => sent.extend_from_slice(b),
                Action::Expect(Expect::Line(b) | Expect::Bytes(b)) => received.extend_from_slice(b),
                Action::Expect(Expect::Timestamp(n)) => {
                    received.extend_from_slice(format!("TIMESTAMP {n}\n").as_bytes())
                }
                _ => {}
            }
        }
        for (dir, ours, raw, total) in [
            (
                "client->server",
                &sent,
                &footer.c2s,
                truncated.get(conn.tag.as_str()).copied(),
            ),
            ("server->client", &received, &footer.s2c, None),
        ] {
            let raw = raw
                .as_ref()
                .ok_or_else(|| format!("{}.txt: no raw {dir} bytes for [{}]", t.name, conn.tag))?;
            let total = total.unwrap_or(raw.len());
            let shared = raw.len().min(ours.len());
            let first_diff = (0..shared).find(|&i| raw[i] != ours[i]);
            if ours.len() != total || first_diff.is_some() {
                let at = first_diff.unwrap_or(shared);
                return Err(format!(
                    "{}.txt [{}]: the interleaved {dir} items ({} bytes) do not match the raw \
                     stream ({total} bytes) at byte {at}: items {} vs raw {}",
                    t.name,
                    conn.tag,
                    ours.len(),
                    pylit::show(&ours[at.min(ours.len())..]),
                    pylit::show(&raw[at.min(raw.len())..]),
                ));
            }
        }
    }
    Ok(())
}

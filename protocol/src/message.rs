//! Messages of the annex P2P protocol, versions 0–4, with git-annex's exact wire
//! rules (annex-spec §1.2–1.7, `P2P/Protocol.hs`, `Utility/SimpleProtocol.hs`).
//!
//! * A message is one line: tokens joined by single spaces, ended by `\n`. An empty
//!   token keeps its separator (`PUT  KEY` when there is no associated file).
//! * A received line may end in one `\r`, which is dropped. Lines longer than
//!   [`MAX_LINE`] bytes (not counting the `\n`) are a protocol error.
//! * The command word ends at the first whitespace character; exactly one
//!   separator is removed. Fixed-arity commands split the rest at the first
//!   whitespace, and the last argument takes the remainder, spaces included.
//! * Numbers are read leniently, as Haskell's `reads` does: leading whitespace is
//!   skipped and trailing junk ignored.
//! * A line that does not parse is [`ParseError`]; servers answer it with
//!   `ERROR unknown command`.

use std::fmt;

use crate::key::Key;
use crate::uuid::{AuthToken, Uuid};

/// The longest line git-annex accepts, not counting the `\n` (v4-12 transcript:
/// 32767 bytes are served, 32768 close the connection).
pub const MAX_LINE: usize = 32767;

/// The highest protocol version spoken (`maxProtocolVersion`).
pub const MAX_VERSION: u32 = 4;

/// A negotiated or offered protocol version. git-annex keeps it as an unbounded
/// integer and answers `VERSION -1` with `VERSION -1`, so it is signed here.
pub type Version = i64;

/// The git service behind `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }
}

/// The associated file of a `GET` or `PUT`: informational, relative, with git-annex's
/// lossy encoding (whitespace travels as `%`, and arrives as `_`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AssociatedFile(Option<String>);

impl AssociatedFile {
    pub fn none() -> AssociatedFile {
        AssociatedFile(None)
    }

    /// A file path as the sender knows it. Paths that git-annex would refuse
    /// (absolute) are dropped rather than sent.
    pub fn new(path: &str) -> AssociatedFile {
        if path.is_empty() || path.starts_with('/') {
            AssociatedFile(None)
        } else {
            AssociatedFile(Some(path.to_owned()))
        }
    }

    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// `%` → `%%`, every whitespace character → `%`.
    pub fn encode(&self) -> String {
        let Some(path) = &self.0 else {
            return String::new();
        };
        let mut out = String::with_capacity(path.len());
        for c in path.chars() {
            if c == '%' {
                out.push_str("%%");
            } else if c.is_whitespace() {
                out.push('%');
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `%%` → `%`, a lone `%` → `_`, control characters → `_`; absolute paths fail.
    pub fn decode(token: &str) -> Option<AssociatedFile> {
        if token.is_empty() {
            return Some(AssociatedFile(None));
        }
        let mut out = String::with_capacity(token.len());
        let mut chars = token.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '%' {
                if chars.peek() == Some(&'%') {
                    chars.next();
                    out.push('%');
                } else {
                    out.push('_');
                }
            } else if c.is_control() {
                out.push('_');
            } else {
                out.push(c);
            }
        }
        if out.starts_with('/') {
            return None;
        }
        Some(AssociatedFile(Some(out)))
    }
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The client's UUID may be empty: `git-remote-p2p-annex` in a new clone
    /// (no `annex.uuid` yet) sends `AUTH  <token>`, and git-annex accepts it.
    Auth(Option<Uuid>, AuthToken),
    AuthSuccess(Uuid),
    AuthFailure,
    Version(Version),
    Bypass(Vec<Uuid>),
    CheckPresent(Key),
    LockContent(Key),
    UnlockContent,
    Remove(Key),
    RemoveBefore(i64, Key),
    GetTimestamp,
    Timestamp(i64),
    Get(u64, AssociatedFile, Key),
    Put(AssociatedFile, Key),
    PutFrom(u64),
    AlreadyHave,
    AlreadyHavePlus(Vec<Uuid>),
    /// A payload of this many raw bytes follows the line.
    Data(u64),
    DataPresent,
    Valid,
    Invalid,
    Success,
    SuccessPlus(Vec<Uuid>),
    Failure,
    FailurePlus(Vec<Uuid>),
    Connect(Service),
    ConnectDone(i32),
    NotifyChange,
    /// The shas (or, from old peers, ref names) of changed refs.
    Changed(Vec<String>),
    Error(String),
}

/// A line that is not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparsable protocol line")]
pub struct ParseError;

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Splits at the first whitespace character, removing exactly that character.
fn separate(s: &str) -> (&str, &str) {
    match s.char_indices().find(|&(_, c)| is_space(c)) {
        Some((i, c)) => (&s[..i], &s[i + c.len_utf8()..]),
        None => (s, ""),
    }
}

fn parse_key(s: &str) -> Result<Key, ParseError> {
    Key::parse(s).map_err(|_| ParseError)
}

fn parse_uuid(s: &str) -> Result<Uuid, ParseError> {
    Uuid::parse(s).map_err(|_| ParseError)
}

fn parse_uuid_list(s: &str) -> Result<Vec<Uuid>, ParseError> {
    s.split(is_space)
        .filter(|w| !w.is_empty())
        .map(parse_uuid)
        .collect()
}

/// Haskell `reads` for an integer: optional leading whitespace, optional `-`, at
/// least one digit; the rest is ignored. Values beyond i64 saturate (git-annex
/// uses unbounded integers, and every use clamps them anyway).
pub fn read_integer(s: &str) -> Option<i64> {
    let s = s.trim_start_matches(is_space);
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let mut value: i64 = 0;
    for b in digits[..end].bytes() {
        let d = i64::from(b - b'0');
        value = value.saturating_mul(10).saturating_add(d);
    }
    Some(if negative { -value } else { value })
}

fn read_unsigned(s: &str) -> Result<u64, ParseError> {
    match read_integer(s) {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err(ParseError),
    }
}

fn parse0(rest: &str, m: Message) -> Result<Message, ParseError> {
    if rest.is_empty() {
        Ok(m)
    } else {
        Err(ParseError)
    }
}

impl Message {
    /// Parses one line (without its `\n`; one trailing `\r` is dropped here).
    pub fn parse(line: &[u8]) -> Result<Message, ParseError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| ParseError)?;
        let (cmd, rest) = separate(line);
        use Message as M;
        match cmd {
            "AUTH" => {
                let (u, t) = separate(rest);
                let uuid = if u.is_empty() {
                    None
                } else {
                    Some(parse_uuid(u)?)
                };
                Ok(M::Auth(uuid, AuthToken::parse(t).ok_or(ParseError)?))
            }
            "AUTH-SUCCESS" => Ok(M::AuthSuccess(parse_uuid(rest)?)),
            "AUTH-FAILURE" => parse0(rest, M::AuthFailure),
            "VERSION" => read_integer(rest).map(M::Version).ok_or(ParseError),
            "BYPASS" => Ok(M::Bypass(parse_uuid_list(rest)?)),
            "CHECKPRESENT" => Ok(M::CheckPresent(parse_key(rest)?)),
            "LOCKCONTENT" => Ok(M::LockContent(parse_key(rest)?)),
            "UNLOCKCONTENT" => parse0(rest, M::UnlockContent),
            "REMOVE" => Ok(M::Remove(parse_key(rest)?)),
            "REMOVE-BEFORE" => {
                let (ts, key) = separate(rest);
                let ts = read_integer(ts).ok_or(ParseError)?;
                Ok(M::RemoveBefore(ts, parse_key(key)?))
            }
            "GETTIMESTAMP" => parse0(rest, M::GetTimestamp),
            "TIMESTAMP" => read_integer(rest).map(M::Timestamp).ok_or(ParseError),
            "GET" => {
                let (offset, rest) = separate(rest);
                let (afile, key) = separate(rest);
                Ok(M::Get(
                    read_unsigned(offset)?,
                    AssociatedFile::decode(afile).ok_or(ParseError)?,
                    parse_key(key)?,
                ))
            }
            "PUT" => {
                let (afile, key) = separate(rest);
                Ok(M::Put(
                    AssociatedFile::decode(afile).ok_or(ParseError)?,
                    parse_key(key)?,
                ))
            }
            "PUT-FROM" => Ok(M::PutFrom(read_unsigned(rest)?)),
            "ALREADY-HAVE" => parse0(rest, M::AlreadyHave),
            "ALREADY-HAVE-PLUS" => Ok(M::AlreadyHavePlus(parse_uuid_list(rest)?)),
            "DATA" => Ok(M::Data(read_unsigned(rest)?)),
            "DATA-PRESENT" => parse0(rest, M::DataPresent),
            "VALID" => parse0(rest, M::Valid),
            "INVALID" => parse0(rest, M::Invalid),
            "SUCCESS" => parse0(rest, M::Success),
            "SUCCESS-PLUS" => Ok(M::SuccessPlus(parse_uuid_list(rest)?)),
            "FAILURE" => parse0(rest, M::Failure),
            "FAILURE-PLUS" => Ok(M::FailurePlus(parse_uuid_list(rest)?)),
            "CONNECT" => match rest {
                "git-upload-pack" => Ok(M::Connect(Service::UploadPack)),
                "git-receive-pack" => Ok(M::Connect(Service::ReceivePack)),
                _ => Err(ParseError),
            },
            "CONNECTDONE" => {
                let code = read_integer(rest).ok_or(ParseError)?;
                Ok(M::ConnectDone(
                    code.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                ))
            }
            "NOTIFYCHANGE" => parse0(rest, M::NotifyChange),
            "CHANGED" => Ok(M::Changed(
                rest.split(is_space)
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            "ERROR" => Ok(M::Error(rest.to_owned())),
            _ => Err(ParseError),
        }
    }

    /// Appends the wire form, including the final `\n`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{self}");
        out.push(b'\n');
    }

    /// The wire form, including the final `\n`.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// The protocol version a message first appeared in.
    pub fn min_version(&self) -> Version {
        use Message as M;
        match self {
            M::Valid | M::Invalid => 1,
            M::Bypass(_) | M::SuccessPlus(_) | M::FailurePlus(_) | M::AlreadyHavePlus(_) => 2,
            M::GetTimestamp | M::Timestamp(_) | M::RemoveBefore(..) => 3,
            M::DataPresent => 4,
            _ => 0,
        }
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, word: &str, uuids: &[Uuid]) -> fmt::Result {
    f.write_str(word)?;
    for u in uuids {
        write!(f, " {u}")?;
    }
    Ok(())
}

/// Error texts must stay on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl fmt::Display for Message {
    /// The wire form without the final `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Message as M;
        match self {
            M::Auth(u, t) => {
                let u = u.as_ref().map_or("", Uuid::as_str);
                write!(f, "AUTH {u} {}", t.as_str())
            }
            M::AuthSuccess(u) => write!(f, "AUTH-SUCCESS {u}"),
            M::AuthFailure => f.write_str("AUTH-FAILURE"),
            M::Version(v) => write!(f, "VERSION {v}"),
            M::Bypass(us) => write_list(f, "BYPASS", us),
            M::CheckPresent(k) => write!(f, "CHECKPRESENT {k}"),
            M::LockContent(k) => write!(f, "LOCKCONTENT {k}"),
            M::UnlockContent => f.write_str("UNLOCKCONTENT"),
            M::Remove(k) => write!(f, "REMOVE {k}"),
            M::RemoveBefore(ts, k) => write!(f, "REMOVE-BEFORE {ts} {k}"),
            M::GetTimestamp => f.write_str("GETTIMESTAMP"),
            M::Timestamp(ts) => write!(f, "TIMESTAMP {ts}"),
            M::Get(o, af, k) => write!(f, "GET {o} {} {k}", af.encode()),
            M::Put(af, k) => write!(f, "PUT {} {k}", af.encode()),
            M::PutFrom(o) => write!(f, "PUT-FROM {o}"),
            M::AlreadyHave => f.write_str("ALREADY-HAVE"),
            M::AlreadyHavePlus(us) => write_list(f, "ALREADY-HAVE-PLUS", us),
            M::Data(n) => write!(f, "DATA {n}"),
            M::DataPresent => f.write_str("DATA-PRESENT"),
            M::Valid => f.write_str("VALID"),
            M::Invalid => f.write_str("INVALID"),
            M::Success => f.write_str("SUCCESS"),
            M::SuccessPlus(us) => write_list(f, "SUCCESS-PLUS", us),
            M::Failure => f.write_str("FAILURE"),
            M::FailurePlus(us) => write_list(f, "FAILURE-PLUS", us),
            M::Connect(s) => write!(f, "CONNECT {}", s.as_str()),
            M::ConnectDone(c) => write!(f, "CONNECTDONE {c}"),
            M::NotifyChange => f.write_str("NOTIFYCHANGE"),
            M::Changed(refs) => {
                f.write_str("CHANGED")?;
                for r in refs {
                    write!(f, " {r}")?;
                }
                Ok(())
            }
            M::Error(text) => write!(f, "ERROR {}", one_line(text)),
        }
    }
}

/// What [`LineDecoder::decode`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole line of `consumed` bytes (including its `\n`); `line` excludes the `\n`.
    Line { consumed: usize },
    /// No `\n` yet, and the buffer is still within the line limit: read more.
    Incomplete,
    /// More than [`MAX_LINE`] bytes without a `\n`: the connection is broken.
    TooLong,
}

/// The two-phase, allocation-free line framing used by every reader: first find a
/// whole line in the buffer, then parse it with [`Message::parse`]. Raw `DATA`
/// payloads are not lines; the session tells its driver when to read those.
pub struct LineDecoder;

impl LineDecoder {
    pub fn decode(buf: &[u8]) -> Decoded {
        let window = &buf[..buf.len().min(MAX_LINE + 1)];
        match window.iter().position(|&b| b == b'\n') {
            Some(i) => Decoded::Line { consumed: i + 1 },
            None if buf.len() > MAX_LINE => Decoded::TooLong,
            None => Decoded::Incomplete,
        }
    }
}

/// Runs the decoder over arbitrary input the way a server reads it: lines until
/// a payload or the end. Used by the fuzz target and the bounded fuzz test; it must
/// never panic and never allocate more than the input.
pub fn decode_all(mut input: &[u8]) -> Vec<Result<Message, ParseError>> {
    let mut out = Vec::new();
    while let Decoded::Line { consumed } = LineDecoder::decode(input) {
        let msg = Message::parse(&input[..consumed - 1]);
        input = &input[consumed..];
        if let Ok(Message::Data(n)) = &msg {
            let skip = usize::try_from(*n).unwrap_or(usize::MAX).min(input.len());
            input = &input[skip..];
        }
        out.push(msg);
    }
    out
}

#[cfg(test)]
mod tests;

//! git-annex keys: the strict parser and formatter, `keyFile` escaping and the two
//! hash-directory layouts (annex-spec §2).
//!
//! ```text
//! BACKEND[-sSIZE][-mMTIME][-SCHUNKSIZE-CCHUNKNUM]--NAME
//! ```

use std::fmt;

use md5::Digest;

use crate::verify::Backend;

/// Longest serialized key accepted. Protocol lines are at most 32767 bytes, so no
/// key from a peer can be longer than that anyway.
pub const MAX_KEY_LEN: usize = 32767;

/// Longest file extension git-annex accepts in the name of an `E` backend key.
pub const MAX_EXTENSION_LEN: usize = 64;

/// A parsed key. Two keys are equal when their serialized forms are equal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    text: String,
    backend_end: usize,
    name_start: usize,
    size: Option<u64>,
    mtime: Option<i64>,
    chunk: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty or too long")]
    Length,
    #[error("key has no backend")]
    NoBackend,
    #[error("key has no `--` before its name")]
    NoName,
    #[error("key field `{0}` is malformed or out of order")]
    BadField(String),
    #[error("key contains a control character")]
    ControlChar,
    #[error("key extension is longer than {MAX_EXTENSION_LEN} bytes")]
    LongExtension,
    #[error("chunk fields must come as a pair")]
    HalfChunk,
}

impl Key {
    /// The strict parser (`Types/Key.hs`): numeric fields `s`, `m`, `S`, `C` in that
    /// order, digits only, then `--` and the name. Names may contain `-` and `/`
    /// (URL keys) but never a control character, so a key can neither break a
    /// protocol line nor, after [`Key::file`] escaping, a path.
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        if text.is_empty() || text.len() > MAX_KEY_LEN {
            return Err(KeyError::Length);
        }
        if text.chars().any(|c| c.is_control()) {
            return Err(KeyError::ControlChar);
        }
        let sep = text.find("--").ok_or(KeyError::NoName)?;
        let head = &text[..sep];
        let name_start = sep + 2;
        let mut parts = head.split('-');
        let backend = parts.next().unwrap_or("");
        if backend.is_empty() {
            return Err(KeyError::NoBackend);
        }
        let mut size = None;
        let mut mtime = None;
        let mut chunk_size = None;
        let mut chunk_num = None;
        let mut order = 0u8;
        for field in parts {
            let mut chars = field.chars();
            let tag = chars
                .next()
                .ok_or_else(|| KeyError::BadField(field.into()))?;
            let digits = chars.as_str();
            let (rank, negative_ok) = match tag {
                's' => (1, false),
                'm' => (2, true),
                'S' => (3, false),
                'C' => (4, false),
                _ => return Err(KeyError::BadField(field.into())),
            };
            if rank <= order || !valid_digits(digits, negative_ok) {
                return Err(KeyError::BadField(field.into()));
            }
            order = rank;
            match tag {
                's' => size = Some(parse_u64(digits, field)?),
                'm' => {
                    mtime = Some(
                        digits
                            .parse::<i64>()
                            .map_err(|_| KeyError::BadField(field.into()))?,
                    )
                }
                'S' => chunk_size = Some(parse_u64(digits, field)?),
                _ => chunk_num = Some(parse_u64(digits, field)?),
            }
        }
        let chunk = match (chunk_size, chunk_num) {
            (Some(s), Some(n)) => Some((s, n)),
            (None, None) => None,
            _ => return Err(KeyError::HalfChunk),
        };
        let key = Key {
            text: text.to_owned(),
            backend_end: backend.len(),
            name_start,
            size,
            mtime,
            chunk,
        };
        if key.backend().has_extension()
            && let Some(dot) = key.name().find('.')
            && key.name().len() - dot > MAX_EXTENSION_LEN
        {
            return Err(KeyError::LongExtension);
        }
        Ok(key)
    }

    /// Builds the key of a hash backend for content of `size` bytes with the given
    /// digest (lowercase hex) and extension (with its leading dot, or empty).
    pub fn from_hash(
        backend: &str,
        size: u64,
        hex: &str,
        extension: &str,
    ) -> Result<Key, KeyError> {
        Key::parse(&format!("{backend}-s{size}--{hex}{extension}"))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn backend_name(&self) -> &str {
        &self.text[..self.backend_end]
    }

    pub fn backend(&self) -> Backend {
        Backend::from_name(self.backend_name())
    }

    pub fn name(&self) -> &str {
        &self.text[self.name_start..]
    }

    pub fn size(&self) -> Option<u64> {
        self.size
    }

    pub fn mtime(&self) -> Option<i64> {
        self.mtime
    }

    /// `(chunk size, chunk number)` of a chunk key.
    pub fn chunk(&self) -> Option<(u64, u64)> {
        self.chunk
    }

    /// The hash part of the name: for `E` backends everything before the first
    /// `.`; a historical leading `\` is dropped.
    pub fn hash_part(&self) -> &str {
        let name = self.name();
        let name = name.strip_prefix('\\').unwrap_or(name);
        if self.backend().has_extension() {
            name.split('.').next().unwrap_or(name)
        } else {
            name
        }
    }

    /// The same key without chunk fields: what hash directories are computed from.
    pub fn non_chunk(&self) -> Key {
        if self.chunk.is_none() {
            return self.clone();
        }
        let mut text = self.backend_name().to_owned();
        if let Some(s) = self.size {
            text.push_str(&format!("-s{s}"));
        }
        if let Some(m) = self.mtime {
            text.push_str(&format!("-m{m}"));
        }
        text.push_str("--");
        text.push_str(self.name());
        let backend_end = self.backend_end;
        let name_start = text.len() - self.name().len();
        Key {
            text,
            backend_end,
            name_start,
            size: self.size,
            mtime: self.mtime,
            chunk: None,
        }
    }

    /// `keyFile`: the key as one path component. `&`→`&a`, `%`→`&s`, `:`→`&c`,
    /// `/`→`%`, applied only when one of them occurs.
    pub fn file(&self) -> String {
        let t = &self.text;
        if !t.contains(['&', '%', ':', '/']) {
            return t.clone();
        }
        let mut out = String::with_capacity(t.len() + 8);
        for c in t.chars() {
            match c {
                '&' => out.push_str("&a"),
                '%' => out.push_str("&s"),
                ':' => out.push_str("&c"),
                '/' => out.push('%'),
                c => out.push(c),
            }
        }
        out
    }

    /// `fileKey`: the inverse of [`Key::file`].
    pub fn from_file(file: &str) -> Result<Key, KeyError> {
        let mut out = String::with_capacity(file.len());
        let mut chars = file.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => out.push('/'),
                '&' => match chars.next() {
                    Some('a') => out.push('&'),
                    Some('s') => out.push('%'),
                    Some('c') => out.push(':'),
                    Some(other) => {
                        out.push('&');
                        out.push(other);
                    }
                    None => out.push('&'),
                },
                c => out.push(c),
            }
        }
        Key::parse(&out)
    }

    /// `hashDirLower`: first six hex digits of MD5(non-chunk key), as `abc/def/`.
    pub fn hash_dir_lower(&self) -> String {
        let digest = md5::Md5::digest(self.non_chunk().text.as_bytes());
        let hex = crate::hex::encode(&digest[..3]);
        format!("{}/{}/", &hex[..3], &hex[3..6])
    }

    /// `hashDirMixed`: the older layout used for `.git/annex/objects` in non-bare
    /// repositories.
    pub fn hash_dir_mixed(&self) -> String {
        const ALPHABET: &[u8; 32] = b"0123456789zqjxkmvwgpfZQJXKMVWGPF";
        let digest = md5::Md5::digest(self.non_chunk().text.as_bytes());
        let w = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let c = |x: u32| ALPHABET[((w >> (6 * x)) & 31) as usize] as char;
        format!("{}{}/{}{}/", c(1), c(0), c(3), c(2))
    }
}

fn valid_digits(s: &str, negative_ok: bool) -> bool {
    let s = if negative_ok {
        s.strip_prefix('-').unwrap_or(s)
    } else {
        s
    };
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_u64(digits: &str, field: &str) -> Result<u64, KeyError> {
    digits
        .parse::<u64>()
        .map_err(|_| KeyError::BadField(field.into()))
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.text)
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::parse(s)
    }
}

/// git-annex's extension selection for `E` backends (`selectExtension`): trailing
/// dot-separated components of at most 4 bytes, at most 2 of them, each made of
/// alphanumerics (or bytes ≥ 128). Returns `""` or `".a.b"`.
pub fn select_extension(file_name: &str) -> String {
    let base = file_name.rsplit('/').next().unwrap_or(file_name);
    let base = base.trim_start_matches('.');
    let mut comps: Vec<&str> = base.split('.').collect();
    if comps.len() < 2 {
        return String::new();
    }
    comps.remove(0);
    let mut picked: Vec<&str> = Vec::new();
    for comp in comps.iter().rev() {
        let ok = !comp.is_empty()
            && comp.len() <= 4
            && comp.bytes().all(|b| b.is_ascii_alphanumeric() || b >= 128);
        if !ok || picked.len() == 2 {
            break;
        }
        picked.push(comp);
    }
    picked.reverse();
    picked.iter().map(|c| format!(".{c}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOO: &str =
        "SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt";

    #[test]
    fn hash_dir_vectors_from_the_spec() {
        let cases = [
            (
                "SHA256-s0--e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "2K/49/",
                "999/812/",
            ),
            (
                "SHA1--e69de29bb2d1d6434b8b29ae775ad8c2e48c5391",
                "25/F0/",
                "850/07e/",
            ),
            (
                "SHA256E-s0--e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "pX/ZJ/",
                "f87/4d5/",
            ),
            (FOO, "JV/jx/", "fbd/530/"),
        ];
        for (k, mixed, lower) in cases {
            let key = Key::parse(k).unwrap();
            assert_eq!(key.hash_dir_mixed(), mixed, "{k}");
            assert_eq!(key.hash_dir_lower(), lower, "{k}");
        }
    }

    #[test]
    fn fields_parse_in_order_only() {
        let k = Key::parse("WORM-s10-m1700000000--foo-bar").unwrap();
        assert_eq!(k.size(), Some(10));
        assert_eq!(k.mtime(), Some(1700000000));
        assert_eq!(k.name(), "foo-bar");
        assert_eq!(k.backend_name(), "WORM");
        assert!(Key::parse("WORM-m1-s10--x").is_err());
        assert!(Key::parse("SHA256-s1x--x").is_err());
        assert!(Key::parse("SHA256-q1--x").is_err());
        assert!(Key::parse("-s1--x").is_err());
        assert!(Key::parse("SHA256-s1").is_err());
        assert!(Key::parse("SHA256-s1-S5--x").is_err());
        assert!(Key::parse("SHA256-s1--a\nb").is_err());
        let c = Key::parse("SHA256E-s100-S10-C3--abc.txt").unwrap();
        assert_eq!(c.chunk(), Some((10, 3)));
        assert_eq!(c.non_chunk().as_str(), "SHA256E-s100--abc.txt");
        assert_eq!(c.hash_dir_lower(), c.non_chunk().hash_dir_lower());
    }

    #[test]
    fn long_extension_rejected() {
        let ext = "x".repeat(65);
        assert_eq!(
            Key::parse(&format!("SHA256E-s1--abc.{ext}")),
            Err(KeyError::LongExtension)
        );
        assert!(Key::parse(&format!("SHA256E-s1--abc.{}", "x".repeat(63))).is_ok());
    }

    #[test]
    fn key_file_escaping_round_trips() {
        let k = Key::parse("URL--http://example.com/a&b%c").unwrap();
        assert_eq!(k.file(), "URL--http&c%%example.com%a&ab&sc");
        assert_eq!(Key::from_file(&k.file()).unwrap(), k);
        let plain = Key::parse(FOO).unwrap();
        assert_eq!(plain.file(), FOO);
        assert_eq!(
            plain.hash_part(),
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
    }

    #[test]
    fn extensions() {
        assert_eq!(select_extension("foo.txt"), ".txt");
        assert_eq!(select_extension("a/b/archive.tar.gz"), ".tar.gz");
        assert_eq!(select_extension("x.a.b.c"), ".b.c");
        assert_eq!(select_extension("noext"), "");
        assert_eq!(select_extension(".bashrc"), "");
        assert_eq!(select_extension("photo.jpeg2000"), "");
        assert_eq!(select_extension("my holiday.jpg"), ".jpg");
    }
}

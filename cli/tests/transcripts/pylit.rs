//! Python string/bytes literals, as the transcript recorder printed them with `repr()`.
//!
//! `decode` reads one literal (`b'...'`, `b"..."`, or a `str` literal `'...'` / `"..."`)
//! from the start of a string and returns its bytes and the text after it. `show` is the
//! reverse, used to print bytes in failure messages the way the transcripts do.

/// Decodes the Python literal at the start of `s`; returns its bytes and the rest of `s`.
pub fn decode(s: &str) -> Result<(Vec<u8>, &str), String> {
    let (is_bytes, body) = match s.strip_prefix('b') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut chars = body.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('\'' | '"'))) => q,
        _ => return Err(format!("not a Python literal: {:?}", preview(s))),
    };
    let mut out = Vec::new();
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((out, &body[i + c.len_utf8()..]));
        }
        if c != '\\' {
            if is_bytes && !c.is_ascii() {
                return Err(format!("non-ASCII character {c:?} in a bytes literal"));
            }
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        let (_, esc) = chars
            .next()
            .ok_or_else(|| format!("literal ends inside an escape: {:?}", preview(s)))?;
        match esc {
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            '\\' => out.push(b'\\'),
            '\'' => out.push(b'\''),
            '"' => out.push(b'"'),
            'a' => out.push(0x07),
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'v' => out.push(0x0b),
            'x' => {
                let hex: String = (0..2)
                    .filter_map(|_| chars.next().map(|(_, h)| h))
                    .collect();
                let byte = u8::from_str_radix(&hex, 16)
                    .map_err(|_| format!("bad \\x escape \\x{hex} in {:?}", preview(s)))?;
                out.push(byte);
            }
            '0'..='7' => {
                // Up to three octal digits; the first one is `esc`.
                let mut value = esc.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    let mut peek = chars.clone();
                    match peek.next() {
                        Some((_, d @ '0'..='7')) => {
                            value = value * 8 + d.to_digit(8).unwrap_or(0);
                            chars = peek;
                        }
                        _ => break,
                    }
                }
                let byte = u8::try_from(value)
                    .map_err(|_| format!("octal escape out of range in {:?}", preview(s)))?;
                out.push(byte);
            }
            other => {
                return Err(format!(
                    "unsupported escape \\{other} in Python literal {:?}",
                    preview(s)
                ));
            }
        }
    }
    Err(format!("unterminated Python literal: {:?}", preview(s)))
}

fn preview(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Bytes as a Python-style `b'...'` literal, long values cut in the middle.
pub fn show(bytes: &[u8]) -> String {
    const HEAD: usize = 160;
    const TAIL: usize = 40;
    if bytes.len() <= HEAD + TAIL + 16 {
        return repr(bytes);
    }
    format!(
        "{} ...<{} bytes>... {}",
        repr(&bytes[..HEAD]),
        bytes.len() - HEAD - TAIL,
        repr(&bytes[bytes.len() - TAIL..])
    )
}

fn repr(bytes: &[u8]) -> String {
    let mut s = String::from("b'");
    for &b in bytes {
        match b {
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'\'' => s.push_str("\\'"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_quotes() {
        let (b, rest) = decode(r"b'a\nb\r\t\\\'\x0b0\x9f' tail").expect("valid literal");
        assert_eq!(b, b"a\nb\r\t\\'\x0b0\x9f");
        assert_eq!(rest, " tail");
        let (b, rest) = decode(r#"b"it's \"q\"""#).expect("valid literal");
        assert_eq!(b, b"it's \"q\"");
        assert_eq!(rest, "");
        let (b, _) = decode(r"b''").expect("valid literal");
        assert!(b.is_empty());
        let (b, _) = decode(r"'fatal: \n'").expect("str literal");
        assert_eq!(b, b"fatal: \n");
        let (b, _) = decode(r"b'\0\012'").expect("octal");
        assert_eq!(b, b"\0\n");
    }

    #[test]
    fn rejects_malformed() {
        assert!(decode("b'abc").is_err());
        assert!(decode("abc").is_err());
        assert!(decode(r"b'\xZZ'").is_err());
        assert!(decode(r"b'\q'").is_err());
    }

    #[test]
    fn show_round_trips_short_values() {
        let raw = b"DATA 3\n\x00\xff'\\";
        let shown = show(raw);
        let (back, rest) = decode(&shown).expect("show produces a literal");
        assert_eq!(back, raw);
        assert_eq!(rest, "");
    }
}

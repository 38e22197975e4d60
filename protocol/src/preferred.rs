//! git-annex preferred-content expressions (`git annex wanted`): the common
//! subset of the matching language, parsed and evaluated without I/O.
//!
//! Supported terms: `anything`, `nothing`, `present`, `include=GLOB`,
//! `exclude=GLOB`, `largerthan=SIZE`, `smallerthan=SIZE`, `copies=N`; operators
//! `not`, `and`, `or` and parentheses, with git-annex's precedence: `not` binds
//! tightest, then `and` (adjacent terms with no operator are an implicit
//! `and`), then `or`. Tokens are split on whitespace and around parentheses,
//! as git-annex's `tokenizeMatcher` does, so `(include=*.txt)` is three tokens.
//!
//! Globs match the whole associated file path (relative to the repository
//! top, `/`-separated), case-sensitively: `*` matches any run of characters
//! including `/` (so `include=*.mp3` matches in every directory), `?` any one
//! character, `[...]` a class (`[!...]`/`[^...]` negated, `a-z` ranges). With
//! no associated file, `include=` is false and `exclude=` true (git-annex's
//! `matchGlobFile` is false without a file, and `exclude` negates it).
//! `largerthan`/`smallerthan` are false when the key has no size.
//!
//! An empty expression means "not configured" and parses as `anything`.
//!
//! **Unparsable expressions** (unknown terms such as `groupwanted`,
//! `standard`, `balanced=…`, `copies=group:N`, or a syntax error) are a
//! [`ParseError`]. Callers deciding where content goes treat such a
//! repository as *wanting* the content, so nothing is lost for want of a
//! target; git-annex instead treats it as wanting only what it already has.
//! See [`wants`].

use std::fmt;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Anything,
    Nothing,
    Present,
    Include(String),
    Exclude(String),
    LargerThan(u64),
    SmallerThan(u64),
    Copies(usize),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// What an expression is evaluated against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The associated file, relative to the repository top.
    pub file: Option<&'a str>,
    /// The key's size, when known.
    pub size: Option<u64>,
    /// Whether the repository being evaluated has the content.
    pub present: bool,
    /// How many copies of the content exist.
    pub copies: usize,
}

/// Why an expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "preferred content expression: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// Whether a repository with preferred content `expr` (`None`: none set)
/// wants content with `facts`. No expression, or one that does not parse,
/// wants everything.
pub fn wants(expr: Option<&str>, facts: &Facts<'_>) -> bool {
    match expr.map(Expr::parse) {
        None | Some(Err(_)) => true,
        Some(Ok(e)) => e.matches(facts),
    }
}

fn tokenize(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for word in s.split_whitespace() {
        let mut start = 0;
        for (i, c) in word.char_indices() {
            if c == '(' || c == ')' {
                if start < i {
                    out.push(&word[start..i]);
                }
                out.push(&word[i..i + 1]);
                start = i + 1;
            }
        }
        if start < word.len() {
            out.push(&word[start..]);
        }
    }
    out
}

struct Parser<'a> {
    tokens: Vec<&'a str>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.pos).copied()
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and_expr()?;
        while self.peek() == Some("or") {
            self.pos += 1;
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            match self.peek() {
                None | Some("or") | Some(")") => return Ok(left),
                Some("and") => self.pos += 1,
                Some(_) => {}
            }
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let Some(tok) = self.peek() else {
            return Err(ParseError("unexpected end of expression".into()));
        };
        self.pos += 1;
        match tok {
            "not" => Ok(Expr::Not(Box::new(self.unary()?))),
            "(" => {
                let inner = self.or_expr()?;
                if self.peek() != Some(")") {
                    return Err(ParseError("missing )".into()));
                }
                self.pos += 1;
                Ok(inner)
            }
            ")" | "and" | "or" => Err(ParseError(format!("unexpected {tok}"))),
            _ => term(tok),
        }
    }
}

fn term(tok: &str) -> Result<Expr, ParseError> {
    match tok {
        "anything" => return Ok(Expr::Anything),
        "nothing" => return Ok(Expr::Nothing),
        "present" => return Ok(Expr::Present),
        _ => {}
    }
    let unknown = || ParseError(format!("unsupported term {tok}"));
    let (name, value) = tok.split_once('=').ok_or_else(unknown)?;
    let bad = || ParseError(format!("bad value in {tok}"));
    match name {
        "include" => Ok(Expr::Include(value.to_owned())),
        "exclude" => Ok(Expr::Exclude(value.to_owned())),
        "largerthan" => Ok(Expr::LargerThan(parse_size(value).ok_or_else(bad)?)),
        "smallerthan" => Ok(Expr::SmallerThan(parse_size(value).ok_or_else(bad)?)),
        "copies" => Ok(Expr::Copies(value.parse().map_err(|_| bad())?)),
        _ => Err(unknown()),
    }
}

/// A size as git-annex reads one: a number (decimals allowed) and an
/// optional unit, case-insensitive: `512`, `100mb` (10^6), `1GiB` (2^30),
/// `2 kilobytes`. No unit means bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return None;
    }
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix('s')
        .filter(|u| u.len() > 1)
        .unwrap_or(&unit);
    let mult: u128 = match unit {
        "" | "b" | "byte" => 1,
        "k" | "kb" | "kilobyte" => 1_000,
        "m" | "mb" | "megabyte" => 1_000_000,
        "g" | "gb" | "gigabyte" => 1_000_000_000,
        "t" | "tb" | "terabyte" => 1_000_000_000_000,
        "p" | "pb" | "petabyte" => 1_000_000_000_000_000,
        "e" | "eb" | "exabyte" => 1_000_000_000_000_000_000,
        "kib" | "kibibyte" => 1 << 10,
        "mib" | "mebibyte" => 1 << 20,
        "gib" | "gibibyte" => 1 << 30,
        "tib" | "tebibyte" => 1 << 40,
        "pib" | "pebibyte" => 1 << 50,
        "eib" | "exbibyte" => 1 << 60,
        _ => return None,
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut total = whole.checked_mul(mult)?;
    if !frac.is_empty() {
        let f: u128 = frac.parse().ok()?;
        let scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
        total = total.checked_add(f.checked_mul(mult)? / scale)?;
    }
    u64::try_from(total).ok()
}

/// Whether `text` matches `glob` as a whole (see the module docs).
pub fn glob_match(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with backtracking to the last `*`.
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() {
            match g[gi] {
                '*' => {
                    star = Some((gi, ti));
                    gi += 1;
                    continue;
                }
                '?' => {
                    gi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((ok, next)) = class(&g, gi, t[ti]) {
                        if ok {
                            gi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        // An unterminated `[` is literal.
                        gi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    gi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sg, st)) => {
                gi = sg + 1;
                ti = st + 1;
                star = Some((sg, st + 1));
            }
            None => return false,
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `g[start] == '['`: whether it
/// matched, and the index after the closing `]`; `None` if unterminated.
fn class(g: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(g.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &ch = g.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if g.get(i + 1) == Some(&'-') && g.get(i + 2).is_some_and(|&e| e != ']') {
            let end = g[i + 2];
            if ch <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
}

impl Expr {
    /// Parses an expression; an empty one is `anything`.
    pub fn parse(s: &str) -> Result<Expr, ParseError> {
        let tokens = tokenize(s);
        if tokens.is_empty() {
            return Ok(Expr::Anything);
        }
        let mut p = Parser { tokens, pos: 0 };
        let e = p.or_expr()?;
        match p.peek() {
            None => Ok(e),
            Some(t) => Err(ParseError(format!("unexpected {t}"))),
        }
    }

    /// Evaluates the expression.
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        match self {
            Expr::Anything => true,
            Expr::Nothing => false,
            Expr::Present => f.present,
            Expr::Include(g) => f.file.is_some_and(|p| glob_match(g, p)),
            Expr::Exclude(g) => !f.file.is_some_and(|p| glob_match(g, p)),
            Expr::LargerThan(n) => f.size.is_some_and(|s| s > *n),
            Expr::SmallerThan(n) => f.size.is_some_and(|s| s < *n),
            Expr::Copies(n) => f.copies >= *n,
            Expr::Not(e) => !e.matches(f),
            Expr::And(a, b) => a.matches(f) && b.matches(f),
            Expr::Or(a, b) => a.matches(f) || b.matches(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Facts<'_> {
        Facts {
            file: Some(p),
            ..Facts::default()
        }
    }

    fn m(e: &str, f: &Facts<'_>) -> bool {
        Expr::parse(e).expect("parses").matches(f)
    }

    #[test]
    fn terms() {
        let f = file("a/b.txt");
        assert!(m("anything", &f));
        assert!(!m("nothing", &f));
        assert!(!m("present", &f));
        assert!(m("present", &Facts { present: true, ..f }));
        assert!(m("include=*.txt", &f));
        assert!(!m("exclude=*.txt", &f));
        assert!(m("include=a/*", &f));
        assert!(!m("include=b/*", &f));
        assert!(m("copies=2", &Facts { copies: 2, ..f }));
        assert!(!m("copies=2", &Facts { copies: 1, ..f }));
        assert!(m("", &f));
        assert_eq!(Expr::parse("  ").expect("parses"), Expr::Anything);
    }

    #[test]
    fn no_file() {
        let f = Facts::default();
        assert!(!m("include=*", &f));
        assert!(m("exclude=*.txt", &f));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.mp3", "music/x/y.mp3"));
        assert!(!glob_match("*.mp3", "y.mp3.bak"));
        assert!(glob_match("?.txt", "a.txt"));
        assert!(!glob_match("?.txt", "ab.txt"));
        assert!(glob_match("[abc]*", "beta"));
        assert!(!glob_match("[abc]*", "delta"));
        assert!(glob_match("[!abc]*", "delta"));
        assert!(glob_match("[^a-c]x", "dx"));
        assert!(glob_match("f[0-9][0-9]", "f42"));
        assert!(!glob_match("f[0-9]", "fa"));
        assert!(glob_match("[]]", "]"));
        assert!(glob_match("a[b", "a[b"));
        assert!(!glob_match("*.TXT", "a.txt"));
        assert!(glob_match("**", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("100mb"), Some(100_000_000));
        assert_eq!(parse_size("100MB"), Some(100_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("1.5kb"), Some(1500));
        assert_eq!(parse_size("2kilobytes"), Some(2000));
        assert_eq!(parse_size("3 KiB"), Some(3072));
        assert_eq!(parse_size("10b"), Some(10));
        assert_eq!(parse_size("mb"), None);
        assert_eq!(parse_size("10 zz"), None);
        assert_eq!(parse_size(""), None);
        let big = Facts {
            size: Some(200_000_000),
            ..Facts::default()
        };
        assert!(m("largerthan=100mb", &big));
        assert!(!m("smallerthan=100mb", &big));
        assert!(m("smallerthan=1GiB", &big));
        // Unknown size: neither.
        assert!(!m("largerthan=0", &Facts::default()));
        assert!(!m("smallerthan=1GiB", &Facts::default()));
    }

    #[test]
    fn precedence() {
        let f = file("x.bin");
        // `and` binds tighter than `or`: anything or (nothing and nothing).
        assert!(m("anything or nothing and nothing", &f));
        // Implicit and, same precedence as `and`.
        assert!(m("anything or nothing nothing", &f));
        assert!(!m("(anything or nothing) nothing", &f));
        // `not` binds tightest: (not nothing) and anything.
        assert!(m("not nothing and anything", &f));
        assert!(!m("not anything or nothing", &f));
        assert!(m("not (anything and nothing)", &f));
        assert!(m("not(anything and nothing)", &f));
        assert_eq!(
            Expr::parse("include=*.txt or exclude=*.bin present").expect("parses"),
            Expr::Or(
                Box::new(Expr::Include("*.txt".into())),
                Box::new(Expr::And(
                    Box::new(Expr::Exclude("*.bin".into())),
                    Box::new(Expr::Present)
                ))
            )
        );
        assert!(m(
            "include=*.txt or (exclude=*.bin and present)",
            &file("a.txt")
        ));
        assert!(!m("include=*.txt or (exclude=*.bin and present)", &f));
        assert!(m("not not anything", &f));
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "groupwanted",
            "standard",
            "balanced=nodes",
            "copies=backup:2",
            "largerthan=lots",
            "(anything",
            "anything)",
            "anything or",
            "and anything",
            "not",
            "()",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
        // Unparsable or unset: wants it.
        assert!(wants(Some("groupwanted"), &Facts::default()));
        assert!(wants(None, &Facts::default()));
        assert!(!wants(Some("nothing"), &Facts::default()));
    }
}

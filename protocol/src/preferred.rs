//! git-annex preferred-content expressions (`git annex wanted`), parsed and
//! evaluated as git-annex does, without I/O: the evaluation context is the
//! branch data ([`Context`], built from a [`View`]) and the key's facts
//! ([`Facts`]: its associated file, the key, the repositories holding it).
//!
//! **Terms** (`preferredContentTokens` of `Annex/FileMatcher.hs`):
//! `anything`, `nothing`, `present`, `include=GLOB`, `exclude=GLOB`,
//! `largerthan=SIZE`, `smallerthan=SIZE`, `unused`, `inpreferreddir`,
//! `standard`, `groupwanted`, `securehash`, `inbackend=NAME`, `copies=N`,
//! `copies=GROUP:N`, `copies=TRUSTLEVEL:N` (`TRUSTLEVEL+:N`: that level or
//! better), `lackingcopies=N`, `approxlackingcopies=N`, `metadata=…`,
//! `inallgroup=G`, `onlyingroup=G`, and `balanced=`, `fullybalanced=`,
//! `sizebalanced=`, `fullysizebalanced=` with `G`, `G:N` or
//! `G:lackingcopies`. `includesamecontent=`/`excludesamecontent=` are *not*
//! preferred-content terms (stock git-annex refuses them in `wanted`), so
//! they make an expression unparsable here too.
//!
//! **Syntax** is git-annex's `Utility.Matcher.generate`, ported literally:
//! tokens are split on whitespace and around parentheses; the expression is
//! folded left to right with *no precedence* (`a or b and c` is
//! `(a or b) and c`); adjacent terms/groups get an implicit `and`; `not`
//! negates the next item; a missing or extra `)` is tolerated. Only an
//! unknown term or a bad value makes an expression unparsable — and, since
//! expressions come from other repositories, more than 256 tokens or more
//! than 64 levels of nesting (`and`/`or` chains are flattened, so long
//! lists of alternatives stay shallow).
//!
//! **Evaluation** follows `Limit.hs` for a repository `u` other than the one
//! running the check (`find --want-get-by=u`): locations are the logged
//! ones minus dead repositories; `present` is `u` among them; sizes come from
//! the key (`smallerthan` is *true* for a key without a size, `largerthan`
//! false, as Haskell's `Nothing < Just n`); globs match the whole path from
//! the repository top. `standard` is the expression of `u`'s one standard
//! group and `groupwanted` the `group-preferred-content.log` expression of
//! `u`'s groups when exactly one of them has one; otherwise (or when nested:
//! `standard` inside `standard`, `groupwanted` inside `groupwanted`) they are
//! git-annex's fallback, `present`. `inpreferreddir` uses the remote's
//! `preferreddir` config (default `public`) and, like git-annex's
//! `elem dir . splitPath . takeDirectory`, matches only when it is the
//! *last* directory of the file (`a/public/x` yes, `public/sub/x` no).
//! `lackingcopies`/`approxlackingcopies` both use `numcopies.log` (default
//! 1): per-file `annex.numcopies` attributes are not in the branch.
//! `unused` is false (a file we are told about is in use). `metadata=`
//! matches the key's current metadata from its `.log.met` branch log
//! ([`View::metadata`], given in [`Facts::metadata`]): `FIELD=GLOB`
//! (case-insensitive glob and field name) or `FIELD<V`, `<=`, `>`, `>=`
//! (as numbers when both sides are, as Haskell's `readish :: Double`, else
//! as strings, which is what stock git-annex answers); the synthesized
//! `lastchanged`/`FIELD-lastchanged` fields are not computed, so terms on
//! them are false.
//!
//! **Unstable negations**: when a `present`, `balanced`, `fullybalanced` or
//! `sizebalanced` term (or a `standard`/`groupwanted` whose expression
//! contains one anywhere) is negated an odd number of times, git-annex does
//! not use the expression and wants nothing; so does [`Expr::wants`].
//!
//! **Balanced** (annex-spec §6): the picker is `Annex/Balanced.hs` exactly
//! (HMAC-SHA256 keyed by the group members' concatenated uuids over the
//! serialized key, modulo the candidates). Candidates for `fullybalanced`
//! are members with room: a member with a `maxsize.log` entry and a size has
//! room iff `size + keysize <= maxsize` (`size <= maxsize` if it holds the
//! key). Repository sizes are what git-annex derives too, the sum of the
//! sizes of the keys the location logs say each holds ([`View::repo_sizes`])
//! — but without the live in-flight reservations of other processes, so two
//! concurrent `sizebalanced` decisions can both take the last room.
//! `fullysizebalanced` takes the `N` members with a positive maxsize, room,
//! and the largest free fraction; members without a maxsize never want.
//! `balanced=G:N` is `present or (not copies=G:N and fullybalanced=G:N)`
//! (`sizebalanced` likewise with `fullysizebalanced`). With `:lackingcopies`
//! (whose source we could not read: the rule is inferred from stock
//! git-annex 10.20261026's answers in `cli/tests/preferred.rs`), `N` is
//! numcopies minus the non-untrusted copies *outside* the group, and
//! `balanced`'s guard is "still lacking copies" (fewer non-untrusted copies
//! than numcopies).
//!
//! **Not configured / unparsable**: [`Context::wants`] treats a repository
//! without an expression (or whose expression is empty) as wanting
//! everything, and one whose expression does not parse as wanting it too,
//! so nothing is lost for want of a target; git-annex instead falls back to
//! `present` for an unparsable expression. Required content (`git annex
//! required`) is also preferred content: the two are combined with `or`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest, Sha256};

use crate::key::Key;
use crate::logs::view::{Trust, View};

/// Longest expression accepted, in tokens, and deepest parenthesis nesting:
/// expressions come from other repositories.
const MAX_TOKENS: usize = 256;
const MAX_DEPTH: usize = 64;

/// A parsed expression: git-annex's `Matcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// The empty matcher (`MAny`): matches; as a whole expression it means
    /// "not configured".
    Any,
    Term(Term),
    Not(Box<Expr>),
    /// All of (git-annex's left-nested `MAnd`s, flattened).
    And(Vec<Expr>),
    /// Any of (git-annex's left-nested `MOr`s, flattened).
    Or(Vec<Expr>),
}

/// What `copies=` counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopiesOf {
    Any,
    Group(String),
    /// A trust level; `true`: that level or better (`trusted+`).
    Trust(Trust, bool),
}

/// The balanced family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    Balanced,
    FullyBalanced,
    SizeBalanced,
    FullySizeBalanced,
}

/// How many members of the group a balanced term wants to hold the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    N(i64),
    LackingCopies,
}

/// How `metadata=` matches one field's values (`parseMetaDataMatcher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    /// Case-insensitive glob.
    Glob(String),
    /// Comparisons of the value with the operand: as numbers when both are
    /// (Haskell's `readish :: Double`), else as strings.
    Less(String),
    LessEq(String),
    Greater(String),
    GreaterEq(String),
}

/// A `metadata=` term: the field (lowercased) and how its values match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaMatch {
    pub field: String,
    pub op: MetaOp,
}

/// One term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Anything,
    Nothing,
    Present,
    Include(String),
    Exclude(String),
    LargerThan(u64),
    SmallerThan(u64),
    Unused,
    InPreferredDir,
    /// `standard`, before [`Context::compile`] expands it.
    Standard,
    /// `groupwanted`, before [`Context::compile`] expands it.
    GroupWanted,
    /// An expanded `standard`/`groupwanted`.
    Call(Box<Expr>),
    SecureHash,
    InBackend(String),
    Copies(CopiesOf, i64),
    LackingCopies(i64),
    ApproxLackingCopies(i64),
    MetaData(MetaMatch),
    InAllGroup(String),
    OnlyInGroup(String),
    Balanced(Balance, String, Count),
}

/// The key an expression is evaluated for.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The associated file, relative to the repository top.
    pub file: Option<&'a str>,
    pub key: &'a Key,
    /// Repositories the location log (plus what is known better) says hold
    /// the key; dead ones are ignored on evaluation.
    pub locations: &'a BTreeSet<String>,
    /// The key's current metadata ([`View::metadata`]); `None`: none.
    pub metadata: Option<&'a BTreeMap<String, BTreeSet<String>>>,
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

/// The standard groups' expressions (`standardPreferredContent`, as stock
/// git-annex 10.20261026's `vicfg` lists them).
pub fn standard_expression(group: &str) -> Option<&'static str> {
    Some(match group {
        "client" => {
            "(include=* and ((exclude=*/archive/* and exclude=archive/*) or (not (copies=archive:1 or copies=smallarchive:1)))) or approxlackingcopies=1"
        }
        "transfer" => {
            "(not (inallgroup=client and copies=client:2) and ((include=* and ((exclude=*/archive/* and exclude=archive/*) or (not (copies=archive:1 or copies=smallarchive:1)))) or approxlackingcopies=1)) or approxlackingcopies=1"
        }
        "backup" => "anything",
        "incrementalbackup" => {
            "((not copies=backup:1) and (not copies=incrementalbackup:1)) or approxlackingcopies=1"
        }
        "smallarchive" => {
            "((include=*/archive/* or include=archive/*) and ((not (copies=archive:1 or copies=smallarchive:1)) or approxlackingcopies=1)) or approxlackingcopies=1"
        }
        "archive" => "(not (copies=archive:1 or copies=smallarchive:1)) or approxlackingcopies=1",
        "source" => "not (copies=1)",
        "manual" => {
            "present and ((include=* and ((exclude=*/archive/* and exclude=archive/*) or (not (copies=archive:1 or copies=smallarchive:1)))) or approxlackingcopies=1)"
        }
        "public" => "inpreferreddir",
        "unwanted" => "not anything",
        _ => return None,
    })
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

#[derive(Debug, Clone)]
enum Tok {
    Op(Term),
    And,
    Or,
    Not,
    Open,
    Close,
}

#[derive(Debug, Clone)]
enum Group {
    One(Tok),
    Group(Vec<Group>),
}

/// `tokenGroups`: parentheses become groups; a stray `)` is dropped and a
/// missing one implied.
fn token_groups(toks: Vec<Tok>) -> Result<Vec<Group>, ParseError> {
    let mut it = toks.into_iter();
    let mut out = Vec::new();
    while let Some(t) = it.next() {
        match t {
            Tok::Open => out.push(Group::Group(find_close(&mut it, 1)?)),
            Tok::Close => {}
            t => out.push(Group::One(t)),
        }
    }
    Ok(out)
}

fn find_close(it: &mut std::vec::IntoIter<Tok>, depth: usize) -> Result<Vec<Group>, ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError("parentheses nested too deeply".into()));
    }
    let mut out = Vec::new();
    while let Some(t) = it.next() {
        match t {
            Tok::Close => return Ok(out),
            Tok::Open => out.push(Group::Group(find_close(it, depth + 1)?)),
            t => out.push(Group::One(t)),
        }
    }
    Ok(out)
}

/// `implicitAnd`: an `and` between adjacent terms or groups.
fn implicit_and(groups: Vec<Group>) -> Vec<Group> {
    let need = |g: &Group| matches!(g, Group::One(Tok::Op(_)) | Group::Group(_));
    let mut out: Vec<Group> = Vec::with_capacity(groups.len());
    for g in groups {
        if out.last().is_some_and(need) && need(&g) {
            out.push(Group::One(Tok::And));
        }
        out.push(g);
    }
    out
}

/// `MAnd a b`, flattening a left `And` so long chains stay shallow, and
/// dropping an `MAny` operand as `simplify` would.
fn and(a: Expr, b: Expr) -> Expr {
    match (a, b) {
        (Expr::Any, b) => b,
        (a, Expr::Any) => a,
        (Expr::And(mut v), b) => {
            v.push(b);
            Expr::And(v)
        }
        (a, b) => Expr::And(vec![a, b]),
    }
}

/// `MOr a b`, flattening a left `Or`.
fn or(a: Expr, b: Expr) -> Expr {
    match a {
        Expr::Or(mut v) => {
            v.push(b);
            Expr::Or(v)
        }
        a => Expr::Or(vec![a, b]),
    }
}

/// `process`: folds the groups left to right into `m`. `depth` counts the
/// nested groups and `not`/`and`/`or` operands being read, bounded so that
/// no expression from a peer can exhaust the stack.
fn process(mut m: Expr, groups: &[Group], depth: usize) -> Result<Expr, ParseError> {
    let mut rest = groups;
    while !rest.is_empty() {
        let (m2, r) = consume(m, rest, depth)?;
        m = m2;
        rest = r;
    }
    Ok(m)
}

fn consume(m: Expr, groups: &[Group], depth: usize) -> Result<(Expr, &[Group]), ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError("expression nested too deeply".into()));
    }
    let Some((first, rest)) = groups.split_first() else {
        return Ok((m, groups));
    };
    Ok(match first {
        Group::One(Tok::And) => {
            let (p, r) = consume(Expr::Any, rest, depth + 1)?;
            (and(m, p), r)
        }
        Group::One(Tok::Or) => {
            let (p, r) = consume(Expr::Any, rest, depth + 1)?;
            (or(m, p), r)
        }
        Group::One(Tok::Not) => {
            let (p, r) = consume(Expr::Any, rest, depth + 1)?;
            (and(m, Expr::Not(Box::new(p))), r)
        }
        Group::One(Tok::Op(t)) => (and(m, Expr::Term(t.clone())), rest),
        Group::Group(g) => (process(m, g, depth + 1)?, rest),
        Group::One(Tok::Open | Tok::Close) => consume(m, rest, depth)?,
    })
}

/// `simplify`: drops the `MAny`s the fold leaves in `and`s.
fn simplify(e: Expr) -> Expr {
    match e {
        Expr::And(v) => {
            let mut v: Vec<Expr> = v
                .into_iter()
                .filter(|x| *x != Expr::Any)
                .map(simplify)
                .collect();
            match v.len() {
                0 => Expr::Any,
                1 => v.pop().unwrap_or(Expr::Any),
                _ => Expr::And(v),
            }
        }
        Expr::Or(v) => Expr::Or(v.into_iter().map(simplify).collect()),
        Expr::Not(a) => Expr::Not(Box::new(simplify(*a))),
        e => e,
    }
}

/// The depth of `e`, found without recursion.
fn depth(e: &Expr) -> usize {
    let mut max = 0;
    let mut stack = vec![(e, 1usize)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        match e {
            Expr::Not(a) => stack.push((a, d + 1)),
            Expr::And(v) | Expr::Or(v) => stack.extend(v.iter().map(|x| (x, d + 1))),
            Expr::Any | Expr::Term(_) => {}
        }
    }
    max
}

/// Haskell's `readish :: String -> Maybe Int`: the first lexeme must be
/// an integer literal (optionally negative; decimal, `0x` hex or `0o`
/// octal), and whatever follows it is ignored (`copies=2x` is 2); a
/// fractional literal (`1.5`, `1e3`) is no `Int`. Out-of-range values wrap,
/// as `fromInteger` does.
fn readish(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, s),
    };
    let bytes = body.as_bytes();
    let (radix, digits_start) = match bytes {
        [b'0', b'x' | b'X', d, ..] if d.is_ascii_hexdigit() => (16, 2),
        [b'0', b'o' | b'O', d, ..] if (b'0'..=b'7').contains(d) => (8, 2),
        _ => (10, 0),
    };
    let digits: &[u8] = &bytes[digits_start..];
    let len = digits
        .iter()
        .take_while(|d| char::from(**d).is_digit(radix))
        .count();
    if len == 0 {
        return None;
    }
    if radix == 10 {
        let rest = &digits[len..];
        let fractional = matches!(rest, [b'.', d, ..] if d.is_ascii_digit())
            || matches!(rest, [b'e' | b'E', d, ..] if d.is_ascii_digit())
            || matches!(rest, [b'e' | b'E', b'+' | b'-', d, ..] if d.is_ascii_digit());
        if fractional {
            return None;
        }
    }
    let mut n: i64 = 0;
    for d in &digits[..len] {
        let v = char::from(*d).to_digit(radix)?;
        n = n.wrapping_mul(i64::from(radix)).wrapping_add(i64::from(v));
    }
    Some(if neg { n.wrapping_neg() } else { n })
}

/// Haskell's `readish :: String -> Maybe Double`: the first lexeme must
/// be a number (`3`, `-2.5`, `1e3`); what follows is ignored.
fn readish_f64(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, s),
    };
    let b = body.as_bytes();
    if matches!(b, [b'0', b'x' | b'X' | b'o' | b'O', ..]) {
        return readish(s).map(|n| n as f64);
    }
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut end = digits(0);
    if end == 0 {
        return None;
    }
    if b.get(end) == Some(&b'.') && digits(end + 1) > 0 {
        end += 1 + digits(end + 1);
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(end + 1), Some(b'+' | b'-')));
        let exp = digits(end + 1 + sign);
        if exp > 0 {
            end += 1 + sign + exp;
        }
    }
    let v: f64 = body[..end].parse().ok()?;
    Some(if neg { -v } else { v })
}

/// `legalField`: an alphanumeric first character, then alphanumerics or
/// `_-.`.
fn legal_field(f: &str) -> bool {
    let mut chars = f.chars();
    chars.next().is_some_and(char::is_alphanumeric)
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `parseMetaDataMatcher`: `field=glob`, `field<n`, `<=`, `>`, `>=`; a
/// bare field is `field=` (the empty glob).
fn parse_metadata(value: &str) -> Result<MetaMatch, ParseError> {
    let split = value.find(['=', '<', '>']).unwrap_or(value.len());
    let (field, op) = value.split_at(split);
    if !legal_field(field) {
        return Err(ParseError(format!(
            "Illegal metadata field name, \"{field}\""
        )));
    }
    let op = if let Some(v) = op.strip_prefix('=') {
        MetaOp::Glob(v.to_owned())
    } else if let Some(v) = op.strip_prefix("<=") {
        MetaOp::LessEq(v.to_owned())
    } else if let Some(v) = op.strip_prefix('<') {
        MetaOp::Less(v.to_owned())
    } else if let Some(v) = op.strip_prefix(">=") {
        MetaOp::GreaterEq(v.to_owned())
    } else if let Some(v) = op.strip_prefix('>') {
        MetaOp::Greater(v.to_owned())
    } else {
        MetaOp::Glob(String::new())
    };
    Ok(MetaMatch {
        field: field.to_lowercase(),
        op,
    })
}

impl MetaOp {
    fn matches(&self, value: &str) -> bool {
        use std::cmp::Ordering;
        let cmp = |operand: &str| match (readish_f64(value), readish_f64(operand)) {
            (Some(v), Some(n)) => v.partial_cmp(&n),
            _ => Some(value.cmp(operand)),
        };
        match self {
            MetaOp::Glob(g) => glob_match(&g.to_lowercase(), &value.to_lowercase()),
            MetaOp::Less(n) => cmp(n) == Some(Ordering::Less),
            MetaOp::LessEq(n) => matches!(cmp(n), Some(Ordering::Less | Ordering::Equal)),
            MetaOp::Greater(n) => cmp(n) == Some(Ordering::Greater),
            MetaOp::GreaterEq(n) => {
                matches!(cmp(n), Some(Ordering::Greater | Ordering::Equal))
            }
        }
    }
}

fn parse_copies(value: &str) -> Result<(CopiesOf, i64), ParseError> {
    let bad = || ParseError(format!("bad value for copies: {value}"));
    let parts: Vec<&str> = value.split(':').collect();
    let (of, n) = match parts.as_slice() {
        [n] => (CopiesOf::Any, n),
        [v, n] => {
            // A group named like a trust level is read as the trust level.
            let (name, plus) = match v.strip_suffix('+') {
                Some(b) => (b, true),
                None => (*v, false),
            };
            let of = match Trust::from_name(name) {
                Some(t) => CopiesOf::Trust(t, plus),
                None => CopiesOf::Group((*v).to_owned()),
            };
            (of, n)
        }
        _ => return Err(bad()),
    };
    Ok((of, readish(n).ok_or_else(bad)?))
}

fn parse_balanced(kind: Balance, value: &str) -> Result<Term, ParseError> {
    let bad = || ParseError(format!("bad value for balanced: {value}"));
    let parts: Vec<&str> = value.split(':').collect();
    let (group, count) = match parts.as_slice() {
        [g] => (g, Count::N(1)),
        [g, "lackingcopies"] => (g, Count::LackingCopies),
        [g, n] => (g, Count::N(readish(n).ok_or_else(bad)?)),
        _ => return Err(bad()),
    };
    Ok(Term::Balanced(kind, (*group).to_owned(), count))
}

/// One term (`parseToken`): a name, or `name=value` (a bare `name` of a
/// valued term has the empty value, as in git-annex).
fn term(tok: &str) -> Result<Term, ParseError> {
    match tok {
        "anything" => return Ok(Term::Anything),
        "nothing" => return Ok(Term::Nothing),
        "present" => return Ok(Term::Present),
        "unused" => return Ok(Term::Unused),
        "inpreferreddir" => return Ok(Term::InPreferredDir),
        "standard" => return Ok(Term::Standard),
        "groupwanted" => return Ok(Term::GroupWanted),
        "securehash" => return Ok(Term::SecureHash),
        _ => {}
    }
    let (name, value) = tok.split_once('=').unwrap_or((tok, ""));
    let bad = || ParseError(format!("bad value in {tok}"));
    let count = |v: &str| readish(v).ok_or_else(bad);
    Ok(match name {
        "include" => Term::Include(value.to_owned()),
        "exclude" => Term::Exclude(value.to_owned()),
        "largerthan" => Term::LargerThan(parse_size(value).ok_or_else(bad)?),
        "smallerthan" => Term::SmallerThan(parse_size(value).ok_or_else(bad)?),
        "copies" => {
            let (of, n) = parse_copies(value)?;
            Term::Copies(of, n)
        }
        "lackingcopies" => Term::LackingCopies(count(value)?),
        "approxlackingcopies" => Term::ApproxLackingCopies(count(value)?),
        "inbackend" => Term::InBackend(value.to_owned()),
        "metadata" => Term::MetaData(parse_metadata(value)?),
        "inallgroup" => Term::InAllGroup(value.to_owned()),
        "onlyingroup" => Term::OnlyInGroup(value.to_owned()),
        "balanced" => parse_balanced(Balance::Balanced, value)?,
        "fullybalanced" => parse_balanced(Balance::FullyBalanced, value)?,
        "sizebalanced" => parse_balanced(Balance::SizeBalanced, value)?,
        "fullysizebalanced" => parse_balanced(Balance::FullySizeBalanced, value)?,
        _ => return Err(ParseError(format!("unsupported term {tok}"))),
    })
}

impl Expr {
    /// Parses an expression (`standard`/`groupwanted` left unexpanded; see
    /// [`Context::compile`]). An empty one is [`Expr::Any`].
    pub fn parse(s: &str) -> Result<Expr, ParseError> {
        let words = tokenize(s);
        if words.len() > MAX_TOKENS {
            return Err(ParseError("expression too long".into()));
        }
        let mut toks = Vec::with_capacity(words.len());
        let mut errors = Vec::new();
        for w in words {
            toks.push(match w {
                "and" => Tok::And,
                "or" => Tok::Or,
                "not" => Tok::Not,
                "(" => Tok::Open,
                ")" => Tok::Close,
                _ => match term(w) {
                    Ok(t) => Tok::Op(t),
                    Err(e) => {
                        errors.push(e.0);
                        continue;
                    }
                },
            });
        }
        if !errors.is_empty() {
            return Err(ParseError(errors.join("; ")));
        }
        let groups = implicit_and(token_groups(toks)?);
        let e = process(Expr::Any, &groups, 0)?;
        if depth(&e) > MAX_DEPTH {
            return Err(ParseError("expression nested too deeply".into()));
        }
        Ok(simplify(e))
    }

    /// Whether this is the empty matcher (an expression with no terms).
    pub fn is_empty(&self) -> bool {
        *self == Expr::Any
    }

    fn any_term(&self, f: &dyn Fn(&Term) -> bool) -> bool {
        match self {
            Expr::Any => false,
            Expr::Term(t) => f(t),
            Expr::Not(e) => e.any_term(f),
            Expr::And(v) | Expr::Or(v) => v.iter().any(|x| x.any_term(f)),
        }
    }

    /// `findNegated` + `matchNegationUnstable`: an unstable term negated an
    /// odd number of times (an expanded `standard`/`groupwanted` counts as
    /// one term, unstable if anything in it is).
    fn unstable_negation(&self, negated: bool) -> bool {
        match self {
            Expr::Any => false,
            Expr::Term(t) => negated && t.unstable(),
            Expr::Not(e) => e.unstable_negation(!negated),
            Expr::And(v) | Expr::Or(v) => v.iter().any(|x| x.unstable_negation(negated)),
        }
    }

    /// Whether repository `uuid` wants the key: false when the expression
    /// negates an unstable term (git-annex then does not use it).
    pub fn wants(&self, ctx: &Context, uuid: &str, facts: &Facts<'_>) -> bool {
        !self.unstable_negation(false) && self.matches(ctx, uuid, facts)
    }

    /// Evaluates the expression for repository `uuid` (no stability check).
    pub fn matches(&self, ctx: &Context, uuid: &str, facts: &Facts<'_>) -> bool {
        match self {
            Expr::Any => true,
            Expr::Term(t) => t.matches(ctx, uuid, facts),
            Expr::Not(e) => !e.matches(ctx, uuid, facts),
            Expr::And(v) => v.iter().all(|x| x.matches(ctx, uuid, facts)),
            Expr::Or(v) => v.iter().any(|x| x.matches(ctx, uuid, facts)),
        }
    }
}

/// Whether a backend name is a cryptographically secure hash
/// (`cryptographicallySecure`): SHA2, SHA3, SKEIN, BLAKE2*, BLAKE3, with or
/// without the `E`. VURL keys (secure only through their equivalent keys)
/// and external `X…` backends count as insecure.
pub fn secure_backend(name: &str) -> bool {
    let base = name.strip_suffix('E').unwrap_or(name);
    matches!(base, "SHA224" | "SHA256" | "SHA384" | "SHA512")
        || base.starts_with("SHA3_")
        || base.starts_with("SKEIN")
        || base.starts_with("BLAKE2")
        || base.starts_with("BLAKE3")
}

/// `splitPath . takeDirectory` contains `dir` (see the module docs).
fn in_dir(dir: &str, file: &str) -> bool {
    let parent = match file.rfind('/') {
        Some(i) => file[..i].trim_end_matches('/'),
        None => ".",
    };
    let parent = if parent.is_empty() { "/" } else { parent };
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    for c in parent.chars() {
        cur.push(c);
        if c == '/' {
            parts.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts.iter().any(|p| p == dir)
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// `balancedPicker members candidates key n` (`Annex/Balanced.hs`): the `n`
/// candidates picked for `key` (distinct: picks past the number of
/// candidates wrap around); empty when there are no candidates.
pub fn balanced_pick<'a>(
    members: &BTreeSet<String>,
    candidates: &'a BTreeSet<String>,
    key: &Key,
    n: i64,
) -> Vec<&'a str> {
    let m = candidates.len() as u128;
    if m == 0 || n <= 0 {
        return Vec::new();
    }
    // Picks beyond the m-th repeat earlier ones.
    let n = u128::from(n.unsigned_abs()).min(m);
    let secret: String = members.iter().map(String::as_str).collect();
    let mac = hmac_sha256(secret.as_bytes(), key.as_str().as_bytes());
    let r = mac
        .iter()
        .fold(0u128, |r, &b| (r * 256 + u128::from(b)) % m);
    let c: Vec<&str> = candidates.iter().map(String::as_str).collect();
    (0..n).map(|i| c[((r + i) % m) as usize]).collect()
}

impl Term {
    /// `matchNegationUnstable`.
    fn unstable(&self) -> bool {
        match self {
            Term::Present
            | Term::Balanced(Balance::Balanced, ..)
            | Term::Balanced(Balance::FullyBalanced, ..)
            | Term::Balanced(Balance::SizeBalanced, ..) => true,
            Term::Call(sub) => sub.any_term(&Term::unstable),
            _ => false,
        }
    }

    fn matches(&self, ctx: &Context, u: &str, f: &Facts<'_>) -> bool {
        match self {
            Term::Anything => true,
            Term::Nothing => false,
            // Unexpanded: git-annex's fallback for an unknown sub-expression.
            Term::Present | Term::Standard | Term::GroupWanted => ctx.present(u, f),
            Term::Include(g) => f.file.is_some_and(|p| glob_match(g, p)),
            Term::Exclude(g) => !f.file.is_some_and(|p| glob_match(g, p)),
            Term::LargerThan(n) => f.key.size().is_some_and(|s| s > *n),
            Term::SmallerThan(n) => f.key.size().is_none_or(|s| s < *n),
            Term::Unused => false,
            Term::MetaData(m) => f
                .metadata
                .and_then(|md| md.get(&m.field))
                .is_some_and(|vs| vs.iter().any(|v| m.op.matches(v))),
            Term::InPreferredDir => {
                let dir = ctx.preferreddir.get(u).map_or("public", String::as_str);
                f.file.is_some_and(|p| in_dir(dir, p))
            }
            Term::Call(sub) => sub.matches(ctx, u, f),
            Term::SecureHash => secure_backend(f.key.backend_name()),
            Term::InBackend(name) => f.key.backend_name() == name,
            Term::Copies(of, n) => ctx.copies(of, f) >= *n,
            Term::LackingCopies(n) | Term::ApproxLackingCopies(n) => ctx.lacking(f) >= *n,
            Term::InAllGroup(g) => {
                let members = ctx.members(g);
                members.is_empty() || members.iter().all(|m| ctx.holds(m, f))
            }
            Term::OnlyInGroup(g) => {
                let members = ctx.members(g);
                let mut held = ctx.live_locations(f).peekable();
                held.peek().is_some() && held.all(|l| members.contains(l))
            }
            Term::Balanced(kind, g, count) => ctx.balanced(*kind, g, *count, u, f),
        }
    }
}

/// The branch data preferred content is evaluated against.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `group.log`: uuid → groups.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// `trust.log` (absent: semitrusted).
    pub trust: BTreeMap<String, Trust>,
    /// `numcopies.log` (default 1).
    pub numcopies: i64,
    /// `group-preferred-content.log`: group → expression.
    pub group_wanted: BTreeMap<String, String>,
    /// `preferred-content.log` and `required-content.log`.
    pub preferred: BTreeMap<String, String>,
    pub required: BTreeMap<String, String>,
    /// `maxsize.log`.
    pub maxsize: BTreeMap<String, u64>,
    /// Repository sizes from the location logs (read only when some
    /// repository has a maxsize and some expression a balanced term: they
    /// matter for nothing else).
    pub sizes: BTreeMap<String, u64>,
    /// `remote.log`'s `preferreddir` per repository.
    pub preferreddir: BTreeMap<String, String>,
}

impl Context {
    /// Reads everything from the branch.
    pub fn from_view(view: &View<'_>) -> Context {
        let preferred = view.preferred_contents();
        let required = view.required_contents();
        let maxsize = view.maxsizes();
        let group_wanted = view.group_preferred_content();
        // Sizes take a scan of every location log; only the balanced terms
        // with a maxsize set use them.
        let balanced = preferred
            .values()
            .chain(required.values())
            .chain(group_wanted.values())
            .any(|e| e.contains("balanced="));
        let sizes = if maxsize.is_empty() || !balanced {
            BTreeMap::new()
        } else {
            view.repo_sizes()
        };
        let preferreddir = preferred
            .iter()
            .chain(required.iter())
            .filter(|(_, e)| e.contains("inpreferreddir") || e.contains("standard"))
            .filter_map(|(u, _)| {
                let dir = view.remote_config(u).remove("preferreddir")?;
                Some((u.clone(), dir))
            })
            .collect();
        Context {
            groups: view.group_map(),
            trust: view.trust_map(),
            numcopies: view.numcopies().map_or(1, i64::from),
            group_wanted,
            preferred,
            required,
            maxsize,
            sizes,
            preferreddir,
        }
    }

    fn trust_of(&self, u: &str) -> Trust {
        self.trust.get(u).copied().unwrap_or(Trust::SemiTrusted)
    }

    /// The repositories holding the key, dead ones left out (`keyLocations`).
    fn live_locations<'f>(&'f self, f: &Facts<'f>) -> impl Iterator<Item = &'f String> + 'f {
        f.locations
            .iter()
            .filter(move |u| self.trust_of(u) != Trust::Dead)
    }

    fn holds(&self, u: &str, f: &Facts<'_>) -> bool {
        f.locations.contains(u) && self.trust_of(u) != Trust::Dead
    }

    fn present(&self, u: &str, f: &Facts<'_>) -> bool {
        self.holds(u, f)
    }

    /// Members of group `g`, in ascending order.
    pub fn members(&self, g: &str) -> BTreeSet<String> {
        self.groups
            .iter()
            .filter(|(_, gs)| gs.contains(g))
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn copies(&self, of: &CopiesOf, f: &Facts<'_>) -> i64 {
        let n = self
            .live_locations(f)
            .filter(|u| match of {
                CopiesOf::Any => true,
                CopiesOf::Group(g) => self.groups.get(*u).is_some_and(|gs| gs.contains(g)),
                CopiesOf::Trust(t, false) => self.trust_of(u) == *t,
                CopiesOf::Trust(t, true) => self.trust_of(u).rank() >= t.rank(),
            })
            .count();
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    /// numcopies minus the copies that count (not untrusted, not dead).
    fn lacking(&self, f: &Facts<'_>) -> i64 {
        let have = self
            .live_locations(f)
            .filter(|u| self.trust_of(u) != Trust::Untrusted)
            .count();
        self.numcopies
            .saturating_sub(i64::try_from(have).unwrap_or(i64::MAX))
    }

    /// For `G:lackingcopies`: numcopies minus the copies that count and are
    /// outside group `g` (inferred from stock git-annex's answers; see the
    /// module docs).
    fn lacking_outside(&self, g: &str, f: &Facts<'_>) -> i64 {
        let outside = self
            .live_locations(f)
            .filter(|u| self.trust_of(u) != Trust::Untrusted)
            .filter(|u| !self.groups.get(*u).is_some_and(|gs| gs.contains(g)))
            .count();
        self.numcopies
            .saturating_sub(i64::try_from(outside).unwrap_or(i64::MAX))
    }

    /// `repoHasSpace`, or true when the maxsize or size is unknown.
    fn has_space(&self, u: &str, f: &Facts<'_>) -> bool {
        match (self.maxsize.get(u), self.sizes.get(u)) {
            (Some(&max), Some(&size)) => {
                if f.locations.contains(u) {
                    size <= max
                } else {
                    size.saturating_add(f.key.size().unwrap_or(0)) <= max
                }
            }
            _ => true,
        }
    }

    /// `filterCandidatesFullySizeBalanced`: the `n` members with a positive
    /// maxsize, room, and the largest free fraction.
    fn size_candidates(
        &self,
        members: &BTreeSet<String>,
        n: i64,
        f: &Facts<'_>,
    ) -> BTreeSet<String> {
        let keysize = f.key.size().unwrap_or(0);
        let mut scored: Vec<(&String, f64)> = members
            .iter()
            .filter_map(|u| {
                let max = *self.maxsize.get(u)?;
                let size = *self.sizes.get(u).unwrap_or(&0);
                if max == 0 || !self.has_space(u, f) {
                    return None;
                }
                let held = if f.locations.contains(u) { keysize } else { 0 };
                let free = max as f64 - size as f64 + held as f64;
                Some((u, free / max as f64))
            })
            .collect();
        // `take n . reverse . sortOn snd`: stable ascending sort, reversed.
        scored.sort_by(|a, b| a.1.total_cmp(&b.1));
        scored.reverse();
        let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
        scored.into_iter().take(n).map(|(u, _)| u.clone()).collect()
    }

    fn fully_balanced(&self, size: bool, g: &str, n: i64, u: &str, f: &Facts<'_>) -> bool {
        let members = self.members(g);
        let candidates = if size {
            self.size_candidates(&members, n, f)
        } else {
            members
                .iter()
                .filter(|m| self.has_space(m, f))
                .cloned()
                .collect()
        };
        balanced_pick(&members, &candidates, f.key, n).contains(&u)
    }

    fn balanced(&self, kind: Balance, g: &str, count: Count, u: &str, f: &Facts<'_>) -> bool {
        let size = matches!(kind, Balance::SizeBalanced | Balance::FullySizeBalanced);
        let n = match count {
            Count::N(n) => n,
            Count::LackingCopies => self.lacking_outside(g, f),
        };
        match kind {
            Balance::FullyBalanced | Balance::FullySizeBalanced => {
                self.fully_balanced(size, g, n, u, f)
            }
            Balance::Balanced | Balance::SizeBalanced => {
                let enough = match count {
                    Count::N(n) => self.copies(&CopiesOf::Group(g.to_owned()), f) >= n,
                    Count::LackingCopies => self.lacking(f) <= 0,
                };
                self.present(u, f) || (!enough && self.fully_balanced(size, g, n, u, f))
            }
        }
    }

    /// Parses `text` as repository `u`'s expression, expanding `standard`
    /// and `groupwanted` (`makeMatcher`).
    pub fn compile(&self, u: &str, text: &str) -> Result<Expr, ParseError> {
        self.compile_with(u, text, true, true)
    }

    fn compile_with(
        &self,
        u: &str,
        text: &str,
        standard: bool,
        groupwanted: bool,
    ) -> Result<Expr, ParseError> {
        let e = Expr::parse(text)?;
        self.expand(u, e, standard, groupwanted)
    }

    fn expand(
        &self,
        u: &str,
        e: Expr,
        standard: bool,
        groupwanted: bool,
    ) -> Result<Expr, ParseError> {
        let fallback = || Term::Call(Box::new(Expr::Term(Term::Present)));
        Ok(match e {
            Expr::Term(Term::Standard) => Expr::Term(match self.standard_of(u) {
                Some(text) if standard => {
                    Term::Call(Box::new(self.compile_with(u, text, false, false)?))
                }
                _ => fallback(),
            }),
            Expr::Term(Term::GroupWanted) => Expr::Term(match self.group_wanted_of(u) {
                Some(text) if groupwanted => {
                    Term::Call(Box::new(self.compile_with(u, text, true, false)?))
                }
                _ => fallback(),
            }),
            Expr::Not(a) => Expr::Not(Box::new(self.expand(u, *a, standard, groupwanted)?)),
            Expr::And(v) => Expr::And(
                v.into_iter()
                    .map(|x| self.expand(u, x, standard, groupwanted))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Or(v) => Expr::Or(
                v.into_iter()
                    .map(|x| self.expand(u, x, standard, groupwanted))
                    .collect::<Result<_, _>>()?,
            ),
            e => e,
        })
    }

    /// The expression of `u`'s standard group, if it is in exactly one.
    fn standard_of(&self, u: &str) -> Option<&'static str> {
        let groups = self.groups.get(u)?;
        let mut std = groups.iter().filter_map(|g| standard_expression(g));
        let first = std.next()?;
        std.next().is_none().then_some(first)
    }

    /// The `groupwanted` expression of `u`'s groups, if exactly one has one.
    fn group_wanted_of(&self, u: &str) -> Option<&str> {
        let groups = self.groups.get(u)?;
        let mut it = self
            .group_wanted
            .iter()
            .filter(|(g, _)| groups.contains(*g));
        let (_, first) = it.next()?;
        it.next().is_none().then_some(first.as_str())
    }

    /// Repository `u`'s preferred content (or'ed with its required content,
    /// `preferredRequiredMapsLoad`), compiled; `None` when neither is set or
    /// the result has no terms.
    pub fn expression(&self, u: &str) -> Option<Result<Expr, ParseError>> {
        let pc = self.preferred.get(u).map(|t| self.compile(u, t));
        let rc = self.required.get(u).map(|t| self.compile(u, t));
        let combined = match (pc, rc) {
            (None, None) => return None,
            (Some(x), None) | (None, Some(x)) => x,
            (Some(Err(a)), Some(Err(b))) => Err(ParseError(format!("{} {}", a.0, b.0))),
            (Some(Err(e)), Some(Ok(_))) | (Some(Ok(_)), Some(Err(e))) => Err(e),
            // `combineMatchers`
            (Some(Ok(a)), Some(Ok(b))) => Ok(if a.is_empty() {
                b
            } else if b.is_empty() {
                a
            } else {
                Expr::Or(vec![a, b])
            }),
        };
        match combined {
            Ok(e) if e.is_empty() => None,
            other => Some(other),
        }
    }

    /// Whether repository `u` wants the key. No expression, or one that
    /// does not parse, wants it (see the module docs).
    pub fn wants(&self, u: &str, facts: &Facts<'_>) -> bool {
        match self.expression(u) {
            None | Some(Err(_)) => true,
            Some(Ok(e)) => e.wants(self, u, facts),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    const B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
    const C: &str = "cccccccc-0000-0000-0000-000000000003";

    fn key(s: &str) -> Key {
        Key::parse(s).expect("key")
    }

    fn sha() -> Key {
        key("SHA256E-s100--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt")
    }

    fn ctx() -> Context {
        Context {
            numcopies: 1,
            ..Context::default()
        }
    }

    fn set(us: &[&str]) -> BTreeSet<String> {
        us.iter().map(|u| (*u).to_owned()).collect()
    }

    /// Whether `A` wants `k` at `file`, held by `locs`, with `expr`.
    fn wants(c: &Context, expr: &str, file: Option<&str>, k: &Key, locs: &[&str]) -> bool {
        let locations = set(locs);
        let f = Facts {
            file,
            key: k,
            locations: &locations,
            metadata: None,
        };
        c.compile(A, expr).expect("parses").wants(c, A, &f)
    }

    fn w(expr: &str, file: &str) -> bool {
        wants(&ctx(), expr, Some(file), &sha(), &[])
    }

    #[test]
    fn simple_terms() {
        assert!(w("anything", "a/b.txt"));
        assert!(!w("nothing", "a/b.txt"));
        assert!(w("include=*.txt", "a/b.txt"));
        assert!(!w("exclude=*.txt", "a/b.txt"));
        assert!(w("include=a/*", "a/b.txt"));
        assert!(!w("include=b/*", "a/b.txt"));
        assert!(w("largerthan=99", "x"));
        assert!(!w("largerthan=100", "x"));
        assert!(w("smallerthan=101", "x"));
        assert!(!w("smallerthan=100", "x"));
        assert!(!w("unused", "x"));
        assert!(!w("metadata=author=*", "x"));
        assert!(w("securehash", "x"));
        assert!(w("inbackend=SHA256E", "x"));
        assert!(!w("inbackend=SHA256", "x"));
        assert!(!w("include", "x"), "a bare valued term has the empty value");
        let c = ctx();
        let url = key("URL--http://example.com/x");
        // Haskell's `Nothing < Just n`: a key without a size is smaller.
        assert!(wants(&c, "smallerthan=1", Some("x"), &url, &[]));
        assert!(!wants(&c, "largerthan=0", Some("x"), &url, &[]));
        assert!(!wants(&c, "securehash", Some("x"), &url, &[]));
        assert!(!wants(
            &c,
            "securehash",
            Some("x"),
            &key("WORM-s1-m1--x"),
            &[]
        ));
        assert!(!wants(
            &c,
            "securehash",
            Some("x"),
            &key("SHA1-s1--ab"),
            &[]
        ));
        assert!(wants(
            &c,
            "securehash",
            Some("x"),
            &key("BLAKE2B256E-s1--ab.x"),
            &[]
        ));
        // Without a file: include is false, exclude true.
        assert!(!wants(&c, "include=*", None, &sha(), &[]));
        assert!(wants(&c, "exclude=*.txt", None, &sha(), &[]));
    }

    #[test]
    fn present_and_dead() {
        let mut c = ctx();
        assert!(wants(&c, "present", Some("x"), &sha(), &[A]));
        assert!(!wants(&c, "present", Some("x"), &sha(), &[B]));
        c.trust.insert(A.into(), Trust::Dead);
        assert!(
            !wants(&c, "present", Some("x"), &sha(), &[A]),
            "dead copies do not count"
        );
    }

    #[test]
    fn copies() {
        let mut c = ctx();
        c.groups.insert(B.into(), set(&["backup"]));
        c.groups.insert(C.into(), set(&["backup", "trusted"]));
        c.trust.insert(C.into(), Trust::Trusted);
        c.trust.insert(A.into(), Trust::Untrusted);
        let all = [A, B, C];
        assert!(wants(&c, "copies=3", Some("x"), &sha(), &all));
        assert!(!wants(&c, "copies=4", Some("x"), &sha(), &all));
        assert!(wants(&c, "copies=-1", Some("x"), &sha(), &[]));
        assert!(wants(&c, "copies=backup:2", Some("x"), &sha(), &all));
        assert!(!wants(&c, "copies=backup:3", Some("x"), &sha(), &all));
        assert!(wants(&c, "copies=untrusted:1", Some("x"), &sha(), &all));
        assert!(!wants(&c, "copies=untrusted:2", Some("x"), &sha(), &all));
        assert!(wants(&c, "copies=semitrusted+:2", Some("x"), &sha(), &all));
        assert!(!wants(&c, "copies=semitrusted+:3", Some("x"), &sha(), &all));
        // A group named like a trust level is the trust level.
        assert!(!wants(&c, "copies=trusted:2", Some("x"), &sha(), &all));
        c.trust.insert(B.into(), Trust::Dead);
        assert!(!wants(&c, "copies=backup:2", Some("x"), &sha(), &all));
        assert!(Expr::parse("copies=a:b:1").is_err());
        assert!(Expr::parse("copies=x").is_err());
    }

    #[test]
    fn lacking_copies() {
        let mut c = ctx();
        c.numcopies = 3;
        c.trust.insert(B.into(), Trust::Untrusted);
        // A counts, B (untrusted) does not: 3 - 1 = 2 lacking.
        assert!(wants(&c, "lackingcopies=2", Some("x"), &sha(), &[A, B]));
        assert!(!wants(&c, "lackingcopies=3", Some("x"), &sha(), &[A, B]));
        assert!(wants(
            &c,
            "approxlackingcopies=2",
            Some("x"),
            &sha(),
            &[A, B]
        ));
        assert!(wants(&c, "lackingcopies=-1", Some("x"), &sha(), &[A, B, C]));
    }

    #[test]
    fn groups() {
        let mut c = ctx();
        c.groups.insert(B.into(), set(&["g"]));
        c.groups.insert(C.into(), set(&["g"]));
        assert!(wants(&c, "inallgroup=g", Some("x"), &sha(), &[B, C]));
        assert!(!wants(&c, "inallgroup=g", Some("x"), &sha(), &[B]));
        assert!(
            wants(&c, "inallgroup=empty", Some("x"), &sha(), &[]),
            "empty group"
        );
        assert!(wants(&c, "onlyingroup=g", Some("x"), &sha(), &[B]));
        assert!(!wants(&c, "onlyingroup=g", Some("x"), &sha(), &[A, B]));
        assert!(!wants(&c, "onlyingroup=g", Some("x"), &sha(), &[]));
        assert!(!wants(&c, "onlyingroup=empty", Some("x"), &sha(), &[A]));
    }

    #[test]
    fn preferred_dir() {
        let mut c = ctx();
        assert!(wants(&c, "inpreferreddir", Some("public/x"), &sha(), &[]));
        assert!(wants(&c, "inpreferreddir", Some("a/public/x"), &sha(), &[]));
        // Only the last directory: `splitPath` keeps the other components' `/`.
        assert!(!wants(
            &c,
            "inpreferreddir",
            Some("public/sub/x"),
            &sha(),
            &[]
        ));
        assert!(!wants(&c, "inpreferreddir", Some("public"), &sha(), &[]));
        c.preferreddir.insert(A.into(), "pub".into());
        assert!(wants(&c, "inpreferreddir", Some("pub/x"), &sha(), &[]));
        assert!(!wants(&c, "inpreferreddir", Some("public/x"), &sha(), &[]));
    }

    #[test]
    fn standard_and_groupwanted() {
        let mut c = ctx();
        // No standard group, no groupwanted: `present`.
        assert!(!wants(&c, "standard", Some("x"), &sha(), &[]));
        assert!(wants(&c, "standard", Some("x"), &sha(), &[A]));
        assert!(!wants(&c, "groupwanted", Some("x"), &sha(), &[]));
        c.groups.insert(A.into(), set(&["backup", "mine"]));
        assert!(wants(&c, "standard", Some("x"), &sha(), &[]));
        c.groups.insert(A.into(), set(&["backup", "archive"]));
        assert!(
            !wants(&c, "standard", Some("x"), &sha(), &[]),
            "two standard groups"
        );
        c.groups.insert(A.into(), set(&["archive"]));
        c.groups.insert(B.into(), set(&["smallarchive"]));
        assert!(wants(&c, "standard", Some("x"), &sha(), &[C]));
        c.numcopies = 2;
        assert!(!wants(&c, "standard", Some("x"), &sha(), &[B, C]));
        c.groups.insert(A.into(), set(&["unwanted"]));
        assert!(!wants(&c, "standard", Some("x"), &sha(), &[]));
        c.groups.insert(A.into(), set(&["mine", "other"]));
        c.group_wanted.insert("mine".into(), "include=*.txt".into());
        assert!(wants(&c, "groupwanted", Some("a.txt"), &sha(), &[]));
        assert!(!wants(&c, "groupwanted", Some("a.bin"), &sha(), &[]));
        c.group_wanted.insert("other".into(), "anything".into());
        assert!(
            !wants(&c, "groupwanted", Some("a.txt"), &sha(), &[]),
            "two groupwanted"
        );
        c.group_wanted.remove("other");
        // `standard` inside `groupwanted` expands; `groupwanted` inside does not.
        c.groups.insert(A.into(), set(&["mine", "backup"]));
        c.group_wanted.insert("mine".into(), "standard".into());
        assert!(wants(&c, "groupwanted", Some("a"), &sha(), &[]));
        c.group_wanted.insert("mine".into(), "groupwanted".into());
        assert!(!wants(&c, "groupwanted", Some("a"), &sha(), &[]));
        // An unparsable groupwanted makes the whole expression unparsable.
        c.group_wanted.insert("mine".into(), "bogus".into());
        assert!(c.compile(A, "groupwanted").is_err());
        assert!(c.compile(A, "anything").is_ok());
    }

    #[test]
    fn unstable_negations() {
        let mut c = ctx();
        assert!(!wants(&c, "not present", Some("x"), &sha(), &[]));
        assert!(!wants(
            &c,
            "anything or not present",
            Some("x"),
            &sha(),
            &[]
        ));
        assert!(!wants(&c, "not balanced=g", Some("x"), &sha(), &[]));
        assert!(!wants(&c, "not fullybalanced=g", Some("x"), &sha(), &[]));
        assert!(!wants(&c, "not sizebalanced=g", Some("x"), &sha(), &[]));
        // Stock git-annex does not flag fullysizebalanced.
        assert!(wants(&c, "not fullysizebalanced=g", Some("x"), &sha(), &[]));
        // Doubly negated: stable.
        assert!(!wants(&c, "not not present", Some("x"), &sha(), &[]));
        assert!(wants(&c, "not not present", Some("x"), &sha(), &[A]));
        // A negation inside groupwanted is not looked at; a negated
        // groupwanted containing `present` is unstable.
        c.groups.insert(A.into(), set(&["g"]));
        c.group_wanted.insert("g".into(), "not present".into());
        assert!(wants(&c, "groupwanted", Some("x"), &sha(), &[]));
        assert!(!wants(&c, "not groupwanted", Some("x"), &sha(), &[A]));
    }

    #[test]
    fn left_to_right_without_precedence() {
        assert!(!w("anything or nothing and nothing", "x"));
        assert!(w("nothing and nothing or anything", "x"));
        assert!(!w("not nothing and nothing", "x"));
        assert!(!w("anything or nothing nothing", "x"));
        assert!(w("anything or (nothing nothing)", "x"));
        assert!(w("not (anything and nothing)", "x"));
        assert!(w("not(anything and nothing)", "x"));
        assert!(w("not not anything", "x"));
        assert!(w("include=*.txt or (exclude=*.bin and anything)", "a.txt"));
        // Lenient syntax, as git-annex.
        assert!(w("(anything", "x"));
        assert!(w("anything )", "x"));
        assert!(w("or", "x"));
        assert!(Expr::parse("()").expect("parses").is_empty());
        assert!(Expr::parse("  ").expect("parses").is_empty());
        assert_eq!(
            Expr::parse("a=1").unwrap_err().0,
            "unsupported term a=1".to_string()
        );
        let deep = "(".repeat(MAX_DEPTH + 1);
        assert!(Expr::parse(&deep).is_err());
        let long = "anything ".repeat(MAX_TOKENS + 1);
        assert!(Expr::parse(&long).is_err());
    }

    #[test]
    fn parse_errors_want() {
        for bad in [
            "includesamecontent=*.txt",
            "excludesamecontent=*.txt",
            "bogus",
            "largerthan=lots",
            "balanced=g:x",
            "balanced=g:1:2",
            "lackingcopies=x",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
        let mut c = ctx();
        let locations = set(&[]);
        let f = Facts {
            file: Some("x"),
            key: &sha(),
            locations: &locations,
            metadata: None,
        };
        assert!(c.wants(A, &f), "not configured");
        c.preferred.insert(A.into(), "bogus".into());
        assert!(c.wants(A, &f), "unparsable");
        assert!(matches!(c.expression(A), Some(Err(_))));
        c.preferred.insert(A.into(), "nothing".into());
        assert!(!c.wants(A, &f));
        c.required.insert(A.into(), "include=x".into());
        assert!(c.wants(A, &f), "required content is preferred too");
        c.preferred.insert(A.into(), "".into());
        c.required.insert(A.into(), "".into());
        assert!(c.expression(A).is_none(), "empty is not configured");
    }

    #[test]
    fn picker_matches_git_annex() {
        // `prop_balanced_stable`.
        let us: BTreeSet<String> = (1..=500).map(|i| i.to_string()).collect();
        let k = key("WORM--test");
        assert_eq!(balanced_pick(&us, &us, &k, 1), vec!["332"]);
        assert_eq!(balanced_pick(&us, &us, &k, 3), vec!["332", "333", "334"]);
        assert!(balanced_pick(&us, &BTreeSet::new(), &k, 1).is_empty());
        let two = set(&["1", "2"]);
        assert_eq!(balanced_pick(&us, &two, &k, 9).len(), 2);
        // HMAC-SHA256 (RFC 4231 test case 2).
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::hex::encode(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn balanced_terms() {
        let mut c = ctx();
        for u in [A, B, C] {
            c.groups.insert(u.into(), set(&["g"]));
        }
        let k = sha();
        let members = set(&[A, B, C]);
        let pick = balanced_pick(&members, &members, &k, 1)[0].to_owned();
        let pick2 = balanced_pick(&members, &members, &k, 2);
        let wants_as = |c: &Context, u: &str, e: &str, locs: &[&str]| {
            let locations = set(locs);
            let f = Facts {
                file: Some("x"),
                key: &k,
                locations: &locations,
                metadata: None,
            };
            c.compile(u, e).expect("parses").wants(c, u, &f)
        };
        for u in [A, B, C] {
            assert_eq!(wants_as(&c, u, "fullybalanced=g", &[]), u == pick, "{u}");
            assert_eq!(wants_as(&c, u, "balanced=g", &[]), u == pick);
            assert_eq!(
                wants_as(&c, u, "balanced=g:2", &[]),
                pick2.contains(&u),
                "{u}"
            );
        }
        let other = [A, B, C].into_iter().find(|u| *u != pick).expect("three");
        // balanced: enough copies in the group, so no one else wants it; a
        // holder keeps it.
        assert!(!wants_as(&c, pick.as_str(), "balanced=g", &[other]));
        assert!(wants_as(&c, other, "balanced=g", &[other]));
        assert!(wants_as(&c, pick.as_str(), "fullybalanced=g", &[other]));
        // A full pick is no candidate.
        c.maxsize.insert(pick.clone(), 150);
        c.sizes.insert(pick.clone(), 100);
        let members_left: BTreeSet<String> =
            members.iter().filter(|u| **u != pick).cloned().collect();
        let repick = balanced_pick(&members, &members_left, &k, 1)[0];
        assert!(!wants_as(&c, pick.as_str(), "fullybalanced=g", &[]));
        assert!(wants_as(&c, repick, "fullybalanced=g", &[]));
        // lackingcopies: numcopies 1, no copies → 1 wanted; 1 copy → none.
        c.maxsize.clear();
        assert!(wants_as(&c, pick.as_str(), "balanced=g:lackingcopies", &[]));
        assert!(!wants_as(
            &c,
            pick.as_str(),
            "balanced=g:lackingcopies",
            &[other]
        ));
        assert!(!wants_as(&c, pick.as_str(), "fullybalanced=g:0", &[]));
    }

    #[test]
    fn size_balanced_terms() {
        let mut c = ctx();
        for u in [A, B, C] {
            c.groups.insert(u.into(), set(&["g"]));
        }
        let k = sha(); // 100 bytes
        let wants_as = |c: &Context, u: &str, e: &str| {
            let locations = set(&[]);
            let f = Facts {
                file: Some("x"),
                key: &k,
                locations: &locations,
                metadata: None,
            };
            c.compile(u, e).expect("parses").wants(c, u, &f)
        };
        // No maxsize: nobody.
        for u in [A, B, C] {
            assert!(!wants_as(&c, u, "fullysizebalanced=g",));
            assert!(!wants_as(&c, u, "sizebalanced=g"));
        }
        c.maxsize.insert(A.into(), 1000);
        c.maxsize.insert(B.into(), 1000);
        c.maxsize.insert(C.into(), 150);
        c.sizes.insert(A.into(), 500);
        c.sizes.insert(B.into(), 100);
        c.sizes.insert(C.into(), 100); // no room for 100 more
        assert!(wants_as(&c, B, "sizebalanced=g"), "most free");
        assert!(!wants_as(&c, A, "sizebalanced=g"));
        assert!(!wants_as(&c, C, "sizebalanced=g"));
        assert!(wants_as(&c, A, "fullysizebalanced=g:2"));
        assert!(wants_as(&c, B, "fullysizebalanced=g:2"));
        assert!(!wants_as(&c, C, "fullysizebalanced=g:3"), "full");
    }

    #[test]
    fn readish_is_haskells() {
        assert_eq!(readish("2"), Some(2));
        assert_eq!(readish("-3"), Some(-3));
        assert_eq!(readish("2x"), Some(2), "trailing text ignored");
        assert_eq!(readish("2."), Some(2));
        assert_eq!(readish("0x10"), Some(16));
        assert_eq!(readish("0o17"), Some(15));
        assert_eq!(readish("1.5"), None, "a fractional literal is no Int");
        assert_eq!(readish("1e3"), None);
        assert_eq!(readish("+1"), None);
        assert_eq!(readish(""), None);
        assert_eq!(readish("x"), None);
        assert_eq!(readish("18446744073709551617"), Some(1), "wraps");
        assert_eq!(readish_f64("2.5kg"), Some(2.5));
        assert_eq!(readish_f64("1e3"), Some(1000.0));
        assert_eq!(readish_f64("-2"), Some(-2.0));
        assert_eq!(readish_f64(".5"), None);
        assert_eq!(readish_f64("nan"), None);
        assert!(Expr::parse("copies=2x").is_ok());
        assert!(Expr::parse("lackingcopies=1.5").is_err());
    }

    #[test]
    fn metadata_terms() {
        let mut md: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        md.insert("author".into(), set(&["Joey"]));
        md.insert("year".into(), set(&["2020"]));
        md.insert("code".into(), set(&["x"]));
        let locations = set(&[]);
        let k = sha();
        let f = Facts {
            file: Some("x"),
            key: &k,
            locations: &locations,
            metadata: Some(&md),
        };
        let c = ctx();
        let m = |e: &str| c.compile(A, e).expect("parses").wants(&c, A, &f);
        assert!(m("metadata=author=jo*"), "case-insensitive glob");
        assert!(m("metadata=AUTHOR=joey"), "case-insensitive field");
        assert!(!m("metadata=author=bob"));
        assert!(m("metadata=year<2021"));
        assert!(m("metadata=year<=2020"));
        assert!(!m("metadata=year<2020"));
        assert!(m("metadata=year>=2020"));
        assert!(!m("metadata=year>2020"));
        // Not numbers: compared as strings ("2020" < "abc" < "x").
        assert!(m("metadata=year<abc"));
        assert!(!m("metadata=year>abc"));
        assert!(m("metadata=code>abc"));
        assert!(m("metadata=code>2"), "\"x\" > \"2\" as strings");
        assert!(m("metadata=author>c") == ("Joey" > "c"));
        assert!(!m("metadata=title=*"));
        assert!(!m("metadata=author"), "bare field: the empty glob");
        for bad in [
            "metadata=!x=y",
            "metadata==y",
            "metadata=a/b=c",
            "metadata=",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
        assert!(Expr::parse("metadata=a-b.c_d=*").is_ok());
    }

    /// Expressions come from other repositories: whatever they say, parsing,
    /// compiling and evaluating never panics, and stays within the bounds.
    mod no_panic {
        use super::*;
        use proptest::prelude::*;

        const WORDS: &[&str] = &[
            "and",
            "or",
            "not",
            "(",
            ")",
            "anything",
            "nothing",
            "present",
            "standard",
            "groupwanted",
            "include=*.txt",
            "copies=g:2",
            "copies=trusted+:1",
            "lackingcopies=1",
            "balanced=g",
            "fullybalanced=g:2",
            "sizebalanced=g:lackingcopies",
            "fullysizebalanced=g:9",
            "inallgroup=g",
            "onlyingroup=g",
            "metadata=a<3",
            "inpreferreddir",
            "securehash",
            "largerthan=1k",
            "smallerthan=-",
            "copies=-9",
            "balanced=g:99999999999999999999",
        ];

        fn context() -> Context {
            let mut c = ctx();
            for u in [A, B, C] {
                c.groups.insert(u.into(), set(&["g", "backup"]));
                c.maxsize.insert(u.into(), 1000);
                c.sizes.insert(u.into(), 10);
            }
            c.group_wanted
                .insert("g".into(), "standard or groupwanted".into());
            c
        }

        proptest! {
            #[test]
            fn words(ws in proptest::collection::vec(0..WORDS.len(), 0..40)) {
                let text: Vec<&str> = ws.iter().map(|&i| WORDS[i]).collect();
                let c = context();
                let locations = set(&[A, B]);
                let k = sha();
                let f = Facts { file: Some("a/b.txt"), key: &k, locations: &locations, metadata: None };
                if let Ok(e) = c.compile(A, &text.join(" ")) {
                    let _ = e.wants(&c, A, &f);
                }
            }

            #[test]
            fn bytes(text in ".{0,200}") {
                let c = context();
                let locations = set(&[C]);
                let k = sha();
                let f = Facts { file: None, key: &k, locations: &locations, metadata: None };
                if let Ok(e) = c.compile(B, &text) {
                    let _ = e.wants(&c, B, &f);
                }
            }
        }

        /// The deepest expressions, nested through `groupwanted` and
        /// `standard`, on a quarter of a tokio worker's 2 MiB stack.
        #[test]
        fn long_chains_stay_within_the_stack() {
            let run = || {
                let mut c = context();
                let locations = set(&[]);
                let k = sha();
                let f = Facts {
                    file: Some("x"),
                    key: &k,
                    locations: &locations,
                    metadata: None,
                };
                let nots = |n: usize, last: &str| format!("{}{last}", "not ".repeat(n));
                assert!(c.compile(A, &nots(MAX_DEPTH + 1, "anything")).is_err());
                let e = c
                    .compile(A, &nots(MAX_DEPTH - 1, "anything"))
                    .expect("parses");
                // An odd number of `not`s.
                assert!(!e.wants(&c, A, &f));
                c.group_wanted
                    .insert("g".into(), nots(MAX_DEPTH - 2, "standard"));
                let e = c
                    .compile(A, &nots(MAX_DEPTH - 2, "groupwanted"))
                    .expect("parses");
                assert!(e.wants(&c, A, &f), "backup: anything");
                // Long lists of alternatives stay shallow.
                let ors = vec!["nothing"; MAX_TOKENS / 2].join(" or ");
                assert!(!c.compile(A, &ors).expect("parses").wants(&c, A, &f));
                let parens = format!("{}anything{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
                assert!(c.compile(A, &parens).expect("parses").wants(&c, A, &f));
            };
            std::thread::Builder::new()
                .stack_size(512 * 1024)
                .spawn(run)
                .expect("thread")
                .join()
                .expect("no overflow, no failure");
        }
    }
}

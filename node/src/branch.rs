//! The `git-annex` branch: reading it as a [`Catalog`], and committing the
//! journal (and lines that arrive by gossip) to it in batches.
//!
//! Stock git-annex stages its journal (`annex/journal/`) and commits it to
//! `refs/heads/git-annex` when a command ends. In an annexmesh-only repository
//! nobody does that, so [`commit`] does: one commit per call, however many
//! journal files there are.
//!
//! # How a batch is written
//!
//! Under git-annex's journal lock, every journal file is read once. The new
//! content of each touched branch file is the CRDT join ([`merge_file`]) of the
//! branch's version, the journal's version, the given versions
//! ([`commit_catalog_files`]) and the versions on sibling branches
//! (`refs/remotes/*/git-annex`, `refs/heads/synced/git-annex`: every ref named
//! `…/git-annex`, as git-annex's own `siblingBranches`) that the local branch
//! does not contain yet. Blobs are written, one tree edit covers every path,
//! and one commit records it. Its parents are the local head and those sibling
//! heads, exactly like git-annex's own merge commits (`commitIndex` with
//! `fullname:refs`), so `git annex merge` sees them merged and does nothing
//! more. Without local changes and with one sibling ahead, the branch is
//! fast-forwarded instead, as git-annex does.
//!
//! The branch ref is compare-and-swapped (a `git push` into a bare repository
//! can move it at any time); on a race the batch is rebuilt on the new head.
//! Only then are the committed journal files removed, each after checking that
//! its content is still what was committed.
//!
//! # Compatibility notes
//!
//! * Files written here are compacted (one line per field) like git-annex's
//!   own writers; files whose format is not interpreted ([`Family::Opaque`],
//!   e.g. metadata logs) get git-annex's union merge (sorted distinct lines),
//!   and lines a parser rejects are carried along verbatim, so nothing a newer
//!   git-annex wrote is lost.
//! * git-annex keeps its own index of the branch (`annex/index`) and the head
//!   it last saw (`annex/index.lck`); when it finds the branch moved it merges
//!   the new head into that index (`updateIndex`), so commits made here are
//!   picked up without touching git-annex's index.
//! * Transitions (`git annex forget`, `dropdead`) rewrite history; they are not
//!   applied here: sibling branches are union-merged whatever their
//!   `transitions.log` says.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gix::ObjectId;
use gix::bstr::{BStr, BString, ByteSlice};
use gix::objs::tree::{EntryKind, EntryMode};
use gix::refs::Target;
use gix::refs::transaction::{PreviousValue, RefEdit};
use protocol::logs::catalog::{Catalog, Family, LogFile};

use crate::error::{Error, IoContext, Result};
use crate::journal::{Journal, journal_name};

/// The branch git-annex keeps its logs on.
pub const BRANCH: &str = "refs/heads/git-annex";

/// The identity of the commits made here.
pub const COMMITTER_NAME: &str = "annexmesh";
pub const COMMITTER_EMAIL: &str = "annexmesh@localhost";

/// How often a batch is rebuilt when the branch moves under it.
const RETRIES: usize = 8;

/// How far behind a candidate ancestor's commit time the ancestry walk still
/// looks (clock skew between writers). Giving up early only costs a redundant
/// merge parent, never a line.
const ANCESTRY_SKEW_SECS: i64 = 7 * 24 * 3600;
const ANCESTRY_MAX_COMMITS: usize = 200_000;

/// Commits of this process are serialized: fcntl locks do not exclude threads.
static COMMITTING: Mutex<()> = Mutex::new(());

/// Reads the whole branch as git-annex sees it: every file of
/// `refs/heads/git-annex`, every sibling `…/git-annex` branch not merged yet
/// (union merge), and every journal file (`annex/journal`, and
/// `annex/journal-private`, which git-annex also reads but never commits).
pub fn read(git_dir: &Path) -> Result<Catalog> {
    let mut catalog = Catalog::new();
    // The journal first: a commit moves journal content into the branch before
    // it deletes the journal file, so reading in this order misses nothing.
    let annex = git_dir.join("annex");
    for dir in ["journal", "journal-private"] {
        for j in journal_snapshot(&annex.join(dir))? {
            catalog.insert_content(&j.path, &j.content);
        }
    }
    let repo = open(git_dir)?;
    let local = local_head(&repo)?;
    let local_tree = local.map(|c| tree_of(&repo, c)).transpose()?;
    if let Some(tree) = local_tree {
        let mut files = Vec::new();
        walk(&repo, tree, &mut BString::default(), &mut files)?;
        for (path, blob) in files {
            catalog.insert_content(&path.to_str_lossy(), &read_blob(&repo, blob)?);
        }
    }
    for tip in new_tips(&repo, local)? {
        let mut files = Vec::new();
        diff(
            &repo,
            local_tree,
            tree_of(&repo, tip)?,
            &mut BString::default(),
            &mut files,
        )?;
        for (path, blob) in files {
            catalog.insert_content(&path.to_str_lossy(), &read_blob(&repo, blob)?);
        }
    }
    Ok(catalog)
}

/// Commits every journal file (and merges every sibling `…/git-annex` branch
/// not merged yet) in one commit, then removes the committed journal files.
/// `None` when there was nothing to commit.
pub fn commit(git_dir: &Path, message: &str) -> Result<Option<ObjectId>> {
    write_batch(git_dir, &[], message)
}

/// Like [`commit`], with `files` (branch path, content) joined in too: for
/// lines that arrive by gossip. Each file is merged with the branch's version,
/// never replacing it. Paths that could not be a branch file are skipped.
pub fn commit_catalog_files(
    git_dir: &Path,
    files: &[(String, Vec<u8>)],
    message: &str,
) -> Result<Option<ObjectId>> {
    write_batch(git_dir, files, message)
}

/// The current head of `refs/heads/git-annex`.
pub fn head(git_dir: &Path) -> Result<Option<ObjectId>> {
    local_head(&open(git_dir)?)
}

/// Joins versions of one branch file: the CRDT join of their lines for the
/// families [`LogFile`] interprets (rendered with [`LogFile::content`], lines it
/// cannot parse appended verbatim), git-annex's union merge for the others (a
/// version that already is the union is returned as it is).
pub fn merge_file(path: &str, versions: &[&[u8]]) -> Vec<u8> {
    let family = Family::of(path);
    if family == Family::Opaque {
        let union: BTreeSet<&[u8]> = versions.iter().flat_map(|v| split_lines(v)).collect();
        if let Some(same) = versions
            .iter()
            .find(|v| split_lines(v).collect::<BTreeSet<_>>() == union)
        {
            return same.to_vec();
        }
        return join_lines(union);
    }
    let mut file = LogFile::new(family);
    let mut unparsed = BTreeSet::new();
    for line in versions.iter().flat_map(|v| split_lines(v)) {
        let parsed = match std::str::from_utf8(line) {
            Ok(l) => file.insert_line(l) || LogFile::new(family).insert_line(l),
            Err(_) => false,
        };
        if !parsed {
            unparsed.insert(line);
        }
    }
    let mut out = file.content();
    out.extend(join_lines(unparsed));
    out
}

fn split_lines(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|l| !l.is_empty())
}

fn join_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

/// One journal file as read at the start of a batch.
struct Journalled {
    path: String,
    file: PathBuf,
    content: Vec<u8>,
}

/// The journal's file name back to its branch path (`fileJournal`: `__` is
/// `_`, `_` is `/`).
fn branch_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' {
            if chars.peek() == Some(&'_') {
                chars.next();
                out.push('_');
            } else {
                out.push('/');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `path` can be a file of the branch (no empty, `.`, `..` or `.git`
/// components, nothing git's fsck would refuse).
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.eq_ignore_ascii_case(".git")
                && !c.contains('\0')
        })
}

fn journal_snapshot(dir: &Path) -> Result<Vec<Journalled>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                context: format!("reading {}", dir.display()),
                source: e,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.context(|| format!("reading {}", dir.display()))?;
        let file = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(
                "skipping journal file with a non-UTF-8 name: {}",
                file.display()
            );
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = branch_path(&name);
        if journal_name(&path) != name || !valid_path(&path) {
            tracing::warn!("skipping journal file {name}: not a branch path");
            continue;
        }
        let content = match fs::read(&file) {
            Ok(c) => c,
            // Committed and removed meanwhile (git-annex has the lock too).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // A directory or something else odd: not ours to judge.
            Err(e) if e.kind() == io::ErrorKind::IsADirectory => continue,
            Err(e) => {
                return Err(Error::Io {
                    context: format!("reading {}", file.display()),
                    source: e,
                });
            }
        };
        out.push(Journalled {
            path,
            file,
            content,
        });
    }
    Ok(out)
}

fn write_batch(
    git_dir: &Path,
    files: &[(String, Vec<u8>)],
    message: &str,
) -> Result<Option<ObjectId>> {
    let _serial = COMMITTING.lock().unwrap_or_else(|p| p.into_inner());
    let annex = git_dir.join("annex");
    fs::create_dir_all(&annex).context(|| format!("creating {}", annex.display()))?;
    let lock_path = annex.join("journal.lck");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .context(|| format!("opening {}", lock_path.display()))?;
    crate::sys::lock_exclusive(&lock).context(|| "locking the journal".into())?;

    let journalled = journal_snapshot(&annex.join("journal"))?;
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .filter(|(p, _)| {
            let ok = valid_path(p);
            if !ok {
                tracing::warn!("not committing {p:?}: not a branch path");
            }
            ok
        })
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let repo = open(git_dir)?;
    let mut attempt = 0;
    let committed = loop {
        match build_and_commit(&repo, &journalled, &files, message)? {
            Attempt::Done(id) => break id,
            Attempt::Raced(why) => {
                attempt += 1;
                if attempt >= RETRIES {
                    return Err(Error::Git(format!(
                        "cannot update {BRANCH} after {RETRIES} attempts: {why}"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20 << attempt.min(5)));
            }
        }
    };
    let changed = retire(&journalled, &annex.join("othertmp"))?;
    drop(lock);
    // Journal files rewritten by a thread of this process while the batch was
    // built: put their content back, joined with whatever is there now.
    if !changed.is_empty() {
        let journal = Journal::new(git_dir);
        for (path, content, aside) in changed {
            journal.modify(&path, |now| merge_file(&path, &[now, &content]))?;
            let _ = fs::remove_file(aside);
        }
    }
    Ok(committed)
}

enum Attempt {
    Done(Option<ObjectId>),
    Raced(String),
}

/// Where a version of a file comes from.
enum Source<'a> {
    Blob(ObjectId),
    Bytes(&'a [u8]),
}

fn build_and_commit(
    repo: &gix::Repository,
    journalled: &[Journalled],
    files: &[(&str, &[u8])],
    message: &str,
) -> Result<Attempt> {
    let local = local_head(repo)?;
    let tips = new_tips(repo, local)?;
    let local_changes = !journalled.is_empty() || !files.is_empty();
    if !local_changes && tips.is_empty() {
        return Ok(Attempt::Done(None));
    }
    if !local_changes
        && let [tip] = tips[..]
        && local.map_or(Ok(true), |l| is_ancestor(repo, l, tip))?
    {
        return Ok(match update_ref(repo, local, tip)? {
            None => Attempt::Done(Some(tip)),
            Some(why) => Attempt::Raced(why),
        });
    }

    // The tree to edit: the local head's, or with no local branch, the first
    // sibling's.
    let (base, others) = match (local, tips.split_first()) {
        (Some(l), _) => (Some(l), &tips[..]),
        (None, Some((first, rest))) => (Some(*first), rest),
        (None, None) => (None, &tips[..]),
    };
    let base_tree = base.map(|c| tree_of(repo, c)).transpose()?;
    let empty = ObjectId::empty_tree(repo.object_hash());

    let mut changes: BTreeMap<BString, Vec<Source<'_>>> = BTreeMap::new();
    for &tip in others {
        let mut differing = Vec::new();
        diff(
            repo,
            base_tree,
            tree_of(repo, tip)?,
            &mut BString::default(),
            &mut differing,
        )?;
        for (path, blob) in differing {
            changes.entry(path).or_default().push(Source::Blob(blob));
        }
    }
    for j in journalled {
        changes
            .entry(j.path.as_str().into())
            .or_default()
            .push(Source::Bytes(&j.content));
    }
    for &(path, content) in files {
        changes
            .entry(path.into())
            .or_default()
            .push(Source::Bytes(content));
    }

    let mut index = TreeIndex::new(repo, base_tree);
    let mut editor = repo
        .edit_tree(base_tree.unwrap_or(empty))
        .map_err(git("editing the git-annex tree"))?;
    let mut edited = 0usize;
    for (path, sources) in &changes {
        let base_blob = match index.get(path.as_bstr())? {
            None => None,
            Some((mode, id)) if mode.is_blob() => Some(id),
            Some(_) => {
                tracing::warn!("not committing {path}: the branch has something else there");
                continue;
            }
        };
        let base_content = base_blob.map(|id| read_blob(repo, id)).transpose()?;
        let mut blobs = Vec::new();
        for s in sources {
            if let Source::Blob(id) = s {
                blobs.push(read_blob(repo, *id)?);
            }
        }
        let mut versions: Vec<&[u8]> = Vec::with_capacity(sources.len() + 1);
        versions.extend(base_content.as_deref());
        versions.extend(blobs.iter().map(Vec::as_slice));
        versions.extend(sources.iter().filter_map(|s| match s {
            Source::Bytes(b) => Some(*b),
            Source::Blob(_) => None,
        }));
        let merged = merge_file(&path.to_str_lossy(), &versions);
        if base_content.as_deref() == Some(merged.as_slice()) {
            continue;
        }
        let id = repo
            .write_blob(&merged)
            .map_err(git("writing a blob"))?
            .detach();
        editor
            .upsert(path.as_bstr(), EntryKind::Blob, id)
            .map_err(git("editing the git-annex tree"))?;
        edited += 1;
    }
    if edited == 0 && tips.is_empty() {
        // Everything in the journal is in the branch already.
        return Ok(Attempt::Done(None));
    }
    let tree = if edited == 0 {
        base_tree.unwrap_or(empty)
    } else {
        editor
            .write()
            .map_err(git("writing the git-annex tree"))?
            .detach()
    };

    let sig = signature();
    let mut message = message.trim_end().to_owned();
    message.push('\n');
    let commit = gix::objs::Commit {
        tree,
        parents: local.into_iter().chain(tips.iter().copied()).collect(),
        author: sig.clone(),
        committer: sig,
        encoding: None,
        message: message.into(),
        extra_headers: Vec::new(),
    };
    let id = repo
        .write_object(&commit)
        .map_err(git("writing a commit"))?
        .detach();
    Ok(match update_ref(repo, local, id)? {
        None => Attempt::Done(Some(id)),
        Some(why) => Attempt::Raced(why),
    })
}

/// Removes the journal files whose content was committed. Each is first moved
/// aside (atomically, so a writer that replaces it meanwhile is never lost) and
/// compared; the ones that changed since they were read are returned with their
/// new content and the place they were moved to.
fn retire(journalled: &[Journalled], aside_dir: &Path) -> Result<Vec<(String, Vec<u8>, PathBuf)>> {
    if journalled.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(aside_dir).context(|| format!("creating {}", aside_dir.display()))?;
    let mut changed = Vec::new();
    for (n, j) in journalled.iter().enumerate() {
        let aside = aside_dir.join(format!(".annexmesh-committed.{}.{n}", std::process::id()));
        match fs::rename(&j.file, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Io {
                    context: format!("removing committed {}", j.file.display()),
                    source: e,
                });
            }
        }
        match fs::read(&aside) {
            Ok(now) if now == j.content => {
                fs::remove_file(&aside).context(|| format!("removing {}", aside.display()))?;
            }
            Ok(now) => changed.push((j.path.clone(), now, aside)),
            Err(e) => {
                let _ = fs::rename(&aside, &j.file);
                return Err(Error::Io {
                    context: format!("re-reading {}", aside.display()),
                    source: e,
                });
            }
        }
    }
    if let Some(dir) = journalled.first().and_then(|j| j.file.parent()) {
        // Best effort: a removal that is lost in a crash only commits the same
        // lines again.
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(changed)
}

fn signature() -> gix::actor::Signature {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    gix::actor::Signature {
        name: COMMITTER_NAME.into(),
        email: COMMITTER_EMAIL.into(),
        time: gix::date::Time::new(now, 0),
    }
}

/// Moves the branch from `expected` to `new`; `Some(reason)` if it had moved
/// (or its lock was taken) meanwhile.
fn update_ref(
    repo: &gix::Repository,
    expected: Option<ObjectId>,
    new: ObjectId,
) -> Result<Option<String>> {
    let name = BRANCH
        .try_into()
        .map_err(|e: gix::validate::reference::name::Error| Error::Git(e.to_string()))?;
    let previous = match expected {
        Some(id) => PreviousValue::MustExistAndMatch(Target::Object(id)),
        None => PreviousValue::MustNotExist,
    };
    let edit = RefEdit::update(name, Target::Object(new), previous, "annexmesh: commit");
    let sig = signature();
    let mut time = gix::date::parse::TimeBuf::default();
    match repo.edit_references_as(Some(edit), Some(sig.to_ref(&mut time))) {
        Ok(_) => Ok(None),
        Err(e) => Ok(Some(e.to_string())),
    }
}

fn git<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Git(format!("{what}: {e}"))
}

fn open(git_dir: &Path) -> Result<gix::Repository> {
    let mut repo = gix::open_opts(git_dir, gix::open::Options::isolated())
        .map_err(|e| Error::Git(format!("cannot open {}: {e}", git_dir.display())))?;
    repo.object_cache_size_if_unset(16 << 20);
    Ok(repo)
}

fn local_head(repo: &gix::Repository) -> Result<Option<ObjectId>> {
    let Some(mut r) = repo
        .try_find_reference(BRANCH)
        .map_err(git("reading refs/heads/git-annex"))?
    else {
        return Ok(None);
    };
    Ok(Some(
        r.peel_to_id()
            .map_err(git("reading refs/heads/git-annex"))?
            .detach(),
    ))
}

fn tree_of(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId> {
    Ok(repo
        .find_commit(commit)
        .map_err(git("reading a git-annex commit"))?
        .tree_id()
        .map_err(git("reading a git-annex commit"))?
        .detach())
}

fn read_blob(repo: &gix::Repository, id: ObjectId) -> Result<Vec<u8>> {
    let mut blob = repo.find_blob(id).map_err(git("reading a blob"))?;
    Ok(std::mem::take(&mut blob.data))
}

type Entries = Vec<(BString, EntryMode, ObjectId)>;

fn entries(repo: &gix::Repository, tree: ObjectId) -> Result<Entries> {
    let tree = repo.find_tree(tree).map_err(git("reading a tree"))?;
    let decoded = tree.decode().map_err(git("decoding a tree"))?;
    Ok(decoded
        .entries
        .iter()
        .map(|e| (e.filename.to_owned(), e.mode, e.oid.to_owned()))
        .collect())
}

fn push_component(prefix: &mut BString, name: &[u8]) -> usize {
    let len = prefix.len();
    if len > 0 {
        prefix.push(b'/');
    }
    prefix.extend_from_slice(name);
    len
}

/// Every blob under `tree`.
fn walk(
    repo: &gix::Repository,
    tree: ObjectId,
    prefix: &mut BString,
    out: &mut Vec<(BString, ObjectId)>,
) -> Result<()> {
    for (name, mode, id) in entries(repo, tree)? {
        let len = push_component(prefix, &name);
        if mode.is_tree() {
            walk(repo, id, prefix, out)?;
        } else if mode.is_blob() {
            out.push((prefix.clone(), id));
        }
        prefix.truncate(len);
    }
    Ok(())
}

/// The blobs of `theirs` that `ours` lacks or holds with other content: all a
/// union merge of `theirs` into `ours` can change. Identical subtrees are
/// skipped without being read.
fn diff(
    repo: &gix::Repository,
    ours: Option<ObjectId>,
    theirs: ObjectId,
    prefix: &mut BString,
    out: &mut Vec<(BString, ObjectId)>,
) -> Result<()> {
    if ours == Some(theirs) {
        return Ok(());
    }
    let mine: HashMap<BString, (EntryMode, ObjectId)> = match ours {
        Some(t) => entries(repo, t)?
            .into_iter()
            .map(|(n, m, id)| (n, (m, id)))
            .collect(),
        None => HashMap::new(),
    };
    for (name, mode, id) in entries(repo, theirs)? {
        let ours = mine.get(&name);
        let len = push_component(prefix, &name);
        if mode.is_tree() {
            match ours {
                None => diff(repo, None, id, prefix, out)?,
                Some((m, sub)) if m.is_tree() => diff(repo, Some(*sub), id, prefix, out)?,
                Some(_) => tracing::warn!("not merging {prefix}: a file here, a directory there"),
            }
        } else if mode.is_blob() {
            match ours {
                None => out.push((prefix.clone(), id)),
                Some((m, mine)) if m.is_blob() => {
                    if *mine != id {
                        out.push((prefix.clone(), id));
                    }
                }
                Some(_) => tracing::warn!("not merging {prefix}: a directory here, a file there"),
            }
        }
        prefix.truncate(len);
    }
    Ok(())
}

/// Path lookups in one tree, reading each subtree at most once.
struct TreeIndex<'r> {
    repo: &'r gix::Repository,
    root: Option<ObjectId>,
    dirs: HashMap<BString, Option<ObjectId>>,
    trees: HashMap<ObjectId, HashMap<BString, (EntryMode, ObjectId)>>,
}

impl<'r> TreeIndex<'r> {
    fn new(repo: &'r gix::Repository, root: Option<ObjectId>) -> TreeIndex<'r> {
        TreeIndex {
            repo,
            root,
            dirs: HashMap::new(),
            trees: HashMap::new(),
        }
    }

    fn entry_in(&mut self, tree: ObjectId, name: &[u8]) -> Result<Option<(EntryMode, ObjectId)>> {
        if !self.trees.contains_key(&tree) {
            let map = entries(self.repo, tree)?
                .into_iter()
                .map(|(n, m, id)| (n, (m, id)))
                .collect();
            self.trees.insert(tree, map);
        }
        Ok(self
            .trees
            .get(&tree)
            .and_then(|m| m.get(name.as_bstr()))
            .copied())
    }

    /// The tree at directory `dir` ("" is the root).
    fn dir(&mut self, dir: &BStr) -> Result<Option<ObjectId>> {
        if dir.is_empty() {
            return Ok(self.root);
        }
        if let Some(known) = self.dirs.get(dir) {
            return Ok(*known);
        }
        let (parent, name) = match dir.rfind_byte(b'/') {
            Some(i) => (&dir[..i], &dir[i + 1..]),
            None => (&dir[..0], dir),
        };
        let found = match self.dir(parent.as_bstr())? {
            Some(tree) => match self.entry_in(tree, name)? {
                Some((mode, id)) if mode.is_tree() => Some(id),
                _ => None,
            },
            None => None,
        };
        self.dirs.insert(dir.to_owned(), found);
        Ok(found)
    }

    fn get(&mut self, path: &BStr) -> Result<Option<(EntryMode, ObjectId)>> {
        let (dir, name) = match path.rfind_byte(b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        match self.dir(dir.as_bstr())? {
            Some(tree) => self.entry_in(tree, name),
            None => Ok(None),
        }
    }
}

/// Sibling heads (`…/git-annex` refs other than ours) that `local` does not
/// contain, without duplicates or heads contained in other such heads.
fn new_tips(repo: &gix::Repository, local: Option<ObjectId>) -> Result<Vec<ObjectId>> {
    let platform = repo.references().map_err(git("listing refs"))?;
    let mut candidates = Vec::new();
    for r in platform.all().map_err(git("listing refs"))? {
        let mut r = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("skipping an unreadable ref: {e}");
                continue;
            }
        };
        let name = r.name().as_bstr();
        if name == BRANCH || !name.ends_with(b"/git-annex") {
            continue;
        }
        let name = name.to_owned();
        let Ok(id) = r.peel_to_id().map(|id| id.detach()) else {
            tracing::warn!("skipping {name}: cannot resolve it");
            continue;
        };
        if repo.find_commit(id).is_err() {
            tracing::warn!("skipping {name}: not a commit");
            continue;
        }
        if Some(id) != local && !candidates.contains(&id) {
            candidates.push(id);
        }
    }
    let mut tips: Vec<ObjectId> = Vec::new();
    for &c in &candidates {
        if let Some(l) = local
            && is_ancestor(repo, c, l)?
        {
            continue;
        }
        tips.push(c);
    }
    let mut kept = Vec::new();
    for (i, &t) in tips.iter().enumerate() {
        let mut contained = false;
        for (j, &other) in tips.iter().enumerate() {
            if i != j && is_ancestor(repo, t, other)? {
                contained = true;
                break;
            }
        }
        if !contained {
            kept.push(t);
        }
    }
    Ok(kept)
}

/// Whether `ancestor` is reachable from `descendant`. May answer `false` for
/// a very distant ancestor (see [`ANCESTRY_SKEW_SECS`]): the cost is a
/// redundant merge parent.
fn is_ancestor(repo: &gix::Repository, ancestor: ObjectId, descendant: ObjectId) -> Result<bool> {
    if ancestor == descendant {
        return Ok(true);
    }
    let commit_time = |id: ObjectId| -> Result<i64> {
        Ok(repo
            .find_commit(id)
            .map_err(git("reading a commit"))?
            .time()
            .map_err(git("reading a commit"))?
            .seconds)
    };
    let cutoff = commit_time(ancestor)?.saturating_sub(ANCESTRY_SKEW_SECS);
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([descendant]);
    while let Some(id) = queue.pop_front() {
        if id == ancestor {
            return Ok(true);
        }
        if !seen.insert(id) || seen.len() > ANCESTRY_MAX_COMMITS {
            continue;
        }
        let commit = repo.find_commit(id).map_err(git("reading a commit"))?;
        if commit.time().map_err(git("reading a commit"))?.seconds < cutoff {
            continue;
        }
        queue.extend(commit.parent_ids().map(|p| p.detach()));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names_round_trip() {
        for p in ["uuid.log", "334/dc7/SHA3_256-s1--ab.log", "a_b/c__d/e.log"] {
            assert_eq!(branch_path(&journal_name(p)), p);
        }
        assert_eq!(
            branch_path("334_dc7_SHA3__256-s1--ab.log"),
            "334/dc7/SHA3_256-s1--ab.log"
        );
    }

    #[test]
    fn paths_are_checked() {
        assert!(valid_path("aaa/bbb/K.log"));
        for bad in [
            "", "/x", "x/", "a//b", "../x", "a/./b", ".git/x", "a/.GIT", "a\0b",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn merging_keeps_every_winner_and_unknown_lines() {
        let a = b"10s 1 aaaa\n5s 1 bbbb\n";
        let b = b"12s 0 aaaa\nnot a presence line\n";
        assert_eq!(
            merge_file("fbd/530/K.log", &[a, b]),
            b"12s 0 aaaa\n5s 1 bbbb\nnot a presence line\n"
        );
        // Opaque files: union; an existing version that already is the union is kept.
        let m1 = b"z line\na line\n";
        let m2 = b"a line\n";
        assert_eq!(merge_file("fbd/530/K.log.met", &[m2, m1]), m1);
        assert_eq!(
            merge_file("fbd/530/K.log.met", &[b"b\n", b"a\n"]),
            b"a\nb\n"
        );
    }
}

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
//! New objects are collected in memory and stored in one go: as loose objects
//! for a small batch, as one pack (with its index) from [`PACK_MIN_OBJECTS`]
//! on, since tens of thousands of loose objects take minutes to create. They
//! are fsynced before the branch ref is compare-and-swapped onto the commit (a
//! `git push` into a bare repository can move it at any time; on a race the
//! batch is rebuilt on the new head), the ref is fsynced, and only then are the
//! committed journal files removed. Each is first renamed aside and compared
//! with what was committed: a file rewritten meanwhile by another thread of
//! this process (fcntl locks do not exclude threads, and the journal's own
//! in-process mutex is private to it) is joined back into the journal instead
//! of being lost.
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
use std::fs;
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

/// Commits the journal of every repository this process has written since the
/// last such call (`journal::take_written`): what a session does when it ends,
/// as git-annex-shell does ("recording state in git"). Sessions that end
/// together share commits: the first to take the journal lock commits every
/// journal file there is, the others find little or nothing left. A
/// repository whose commit fails is kept for the next call, and its journal
/// stays as it is for the next session or daemon. Returns the commits made,
/// or the last failure.
pub fn commit_written(message: &str) -> Result<usize> {
    let mut made = 0;
    let mut failed = None;
    for git_dir in crate::journal::take_written() {
        match commit(&git_dir, message) {
            Ok(Some(_)) => made += 1,
            Ok(None) => {}
            Err(e) => {
                crate::journal::rewritten(&git_dir);
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(made),
    }
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

/// A few branch files as git-annex reads them: each the union of the journal's
/// version (else the local branch's) and every sibling `…/git-annex` branch
/// not merged yet (a `git fetch` of another gateway's branch, say). Cheap
/// next to [`read`]: only these paths are looked up.
pub fn read_files(git_dir: &Path, paths: &[&str]) -> Result<Catalog> {
    let journal = Journal::new(git_dir);
    let repo = open(git_dir)?;
    let local = local_head(&repo)?;
    let tips = new_tips(&repo, local)?;
    let mut trees = Vec::new();
    for t in tips {
        trees.push(
            repo.find_commit(t)
                .map_err(git("reading a git-annex commit"))?
                .tree()
                .map_err(git("reading a git-annex tree"))?,
        );
    }
    let mut catalog = Catalog::new();
    for path in paths {
        catalog.insert_content(path, &journal.read(path)?);
        for tree in &trees {
            if let Some(entry) = tree
                .lookup_entry_by_path(path)
                .map_err(git("reading a git-annex tree"))?
            {
                catalog.insert_content(path, &read_blob(&repo, entry.object_id())?);
            }
        }
    }
    Ok(catalog)
}

/// The branch files preferred content reads (as git-annex keeps them: trust,
/// groups, wanted and required expressions, numcopies, sizes' limits…).
pub const PREFERRED_FILES: [&str; 12] = [
    "uuid.log",
    "trust.log",
    "group.log",
    "preferred-content.log",
    "required-content.log",
    "group-preferred-content.log",
    "numcopies.log",
    "mincopies.log",
    "maxsize.log",
    "remote.log",
    "proxy.log",
    "cluster.log",
];

/// What preferred content needs to decide about `keys`: the [`PREFERRED_FILES`]
/// and each key's location log and metadata, not the whole branch. When a
/// `balanced` expression with a `maxsize` set needs repository sizes (summed
/// over every location log), the whole branch ([`read`]).
pub fn read_for_keys(git_dir: &Path, keys: &[&protocol::Key]) -> Result<Catalog> {
    let mut paths: Vec<String> = PREFERRED_FILES.iter().map(|p| (*p).to_owned()).collect();
    for k in keys {
        let log = protocol::logs::presence::location_log_path(k);
        paths.push(format!("{log}.met"));
        paths.push(log);
    }
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let catalog = read_files(git_dir, &refs)?;
    let view = protocol::logs::view::View::new(&catalog);
    let balanced = view
        .preferred_contents()
        .values()
        .chain(view.required_contents().values())
        .chain(view.group_preferred_content().values())
        .any(|e| e.contains("balanced="));
    if balanced && !view.maxsizes().is_empty() {
        return read(git_dir);
    }
    Ok(catalog)
}

/// The files of the `git-annex` branch at `to` that differ from the branch
/// at `from` (added or changed; all of them when `from` is `None`), with
/// their content: what a commit made by anyone (stock git-annex, a `git
/// fetch` merge, another process of ours) brought in.
pub fn files_changed(
    git_dir: &Path,
    from: Option<ObjectId>,
    to: ObjectId,
) -> Result<Vec<(String, Vec<u8>)>> {
    let repo = open(git_dir)?;
    let from_tree = from.map(|c| tree_of(&repo, c)).transpose()?;
    let mut files = Vec::new();
    diff(
        &repo,
        from_tree,
        tree_of(&repo, to)?,
        &mut BString::default(),
        &mut files,
    )?;
    files
        .into_iter()
        .map(|(path, blob)| Ok((path.to_str_lossy().into_owned(), read_blob(&repo, blob)?)))
        .collect()
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
pub(crate) fn branch_path(name: &str) -> String {
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
pub(crate) fn valid_path(path: &str) -> bool {
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
    let lock = crate::journal::JournalLock::take(&annex.join("journal.lck"))?;

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
    let repo = open(git_dir)?.with_object_memory();
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
    // Objects are collected in memory and stored at the end in one go (one
    // pack for a big batch): tens of thousands of loose objects cost minutes.
    repo.objects.reset_object_memory();
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
    let objects = repo.objects.reset_object_memory().unwrap_or_default();
    store_objects(repo, objects)?;
    Ok(match update_ref(repo, local, id)? {
        None => {
            remember_contained(repo, tips);
            Attempt::Done(Some(id))
        }
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
        Ok(_) => {
            // The journal files are deleted next: the ref must be on disk first.
            let loose = repo.common_dir().join(BRANCH);
            sync_file(&loose)?;
            if let Some(dir) = loose.parent() {
                sync_file(dir)?;
            }
            Ok(None)
        }
        Err(e) => Ok(Some(e.to_string())),
    }
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .context(|| format!("fsync {}", path.display()))
}

/// Below this many new objects a batch is stored as loose objects (git's
/// `transfer.unpackLimit` default), from this many on as one pack.
pub const PACK_MIN_OBJECTS: usize = 100;

/// Stores objects collected in memory durably (fsynced before the branch can
/// point at them, since the journal files go once it does).
fn store_objects(repo: &gix::Repository, mut objects: gix::odb::memory::Storage) -> Result<()> {
    let mut objects: Vec<(ObjectId, gix::objs::Kind, Vec<u8>)> = objects
        .drain()
        .map(|(id, (kind, data))| (id, kind, data))
        .collect();
    if objects.is_empty() {
        return Ok(());
    }
    let dir = repo.common_dir().join("objects");
    let mut z = Deflater::new();
    if objects.len() < PACK_MIN_OBJECTS || repo.object_hash() != gix::hash::Kind::Sha1 {
        let mut dirs = BTreeSet::new();
        for (id, kind, data) in &objects {
            if let Some(d) = write_loose(&dir, &mut z, *id, *kind, data)? {
                dirs.insert(d);
            }
        }
        for d in dirs {
            sync_file(&d)?;
        }
        sync_file(&dir)?;
        return Ok(());
    }
    // Commits, then trees, then blobs, as git orders a pack.
    objects.sort_by_key(|(id, kind, _)| (pack_type(*kind), *id));
    write_pack(&dir.join("pack"), &mut z, &objects)
}

/// Writes one loose object; returns the directory it went to if it was new.
fn write_loose(
    objects: &Path,
    z: &mut Deflater,
    id: ObjectId,
    kind: gix::objs::Kind,
    data: &[u8],
) -> Result<Option<PathBuf>> {
    let hex = id.to_hex().to_string();
    let dir = objects.join(&hex[..2]);
    let path = dir.join(&hex[2..]);
    if path.exists() {
        return Ok(None);
    }
    fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
    let mut raw = Vec::with_capacity(data.len() + 32);
    raw.extend_from_slice(kind.as_bytes());
    raw.push(b' ');
    raw.extend_from_slice(data.len().to_string().as_bytes());
    raw.push(0);
    raw.extend_from_slice(data);
    let mut compressed = Vec::with_capacity(raw.len() / 2 + 64);
    z.deflate(&raw, &mut compressed)?;
    write_durable(&dir, &path, &compressed)?;
    Ok(Some(dir))
}

/// Writes `bytes` to `path` through a temp file in `dir`: fsynced, read-only,
/// renamed into place.
fn write_durable(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("tmp_annexmesh_{}_{n}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(0o444))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.context(|| format!("writing {}", path.display()))
}

fn pack_type(kind: gix::objs::Kind) -> u8 {
    match kind {
        gix::objs::Kind::Commit => 1,
        gix::objs::Kind::Tree => 2,
        gix::objs::Kind::Blob => 3,
        gix::objs::Kind::Tag => 4,
    }
}

/// Writes `objects` as one pack (version 2, no deltas) and its index
/// (version 2) into `pack_dir`, the pack first: git finds packs by their index.
fn write_pack(
    pack_dir: &Path,
    z: &mut Deflater,
    objects: &[(ObjectId, gix::objs::Kind, Vec<u8>)],
) -> Result<()> {
    let count = u32::try_from(objects.len())
        .map_err(|_| Error::Git("too many objects for one pack".into()))?;
    let mut pack = Vec::with_capacity(objects.iter().map(|o| o.2.len() / 2 + 24).sum());
    pack.extend_from_slice(b"PACK");
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&count.to_be_bytes());
    let mut index: Vec<(ObjectId, u32, u64)> = Vec::with_capacity(objects.len());
    for (id, kind, data) in objects {
        let start = pack.len();
        let mut size = data.len() as u64;
        let mut byte = (pack_type(*kind) << 4) | (size & 0x0f) as u8;
        size >>= 4;
        while size > 0 {
            pack.push(byte | 0x80);
            byte = (size & 0x7f) as u8;
            size >>= 7;
        }
        pack.push(byte);
        z.deflate(data, &mut pack)?;
        index.push((*id, crc32(&pack[start..]), start as u64));
    }
    let pack_sum = sha1(&pack)?;
    pack.extend_from_slice(pack_sum.as_bytes());

    index.sort_by_key(|(id, _, _)| *id);
    let mut idx = Vec::with_capacity(1032 + index.len() * 28 + 40);
    idx.extend_from_slice(&[0xff, b't', b'O', b'c']);
    idx.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for (id, _, _) in &index {
        fanout[usize::from(id.as_bytes()[0])] += 1;
    }
    let mut running = 0u32;
    for n in fanout {
        running += n;
        idx.extend_from_slice(&running.to_be_bytes());
    }
    for (id, _, _) in &index {
        idx.extend_from_slice(id.as_bytes());
    }
    for (_, crc, _) in &index {
        idx.extend_from_slice(&crc.to_be_bytes());
    }
    let mut large = Vec::new();
    for (_, _, offset) in &index {
        match u32::try_from(*offset) {
            Ok(o) if o < 0x8000_0000 => idx.extend_from_slice(&o.to_be_bytes()),
            _ => {
                let slot = u32::try_from(large.len() / 8)
                    .map_err(|_| Error::Git("pack too large".into()))?;
                idx.extend_from_slice(&(slot | 0x8000_0000).to_be_bytes());
                large.extend_from_slice(&offset.to_be_bytes());
            }
        }
    }
    idx.extend_from_slice(&large);
    idx.extend_from_slice(pack_sum.as_bytes());
    let idx_sum = sha1(&idx)?;
    idx.extend_from_slice(idx_sum.as_bytes());

    fs::create_dir_all(pack_dir).context(|| format!("creating {}", pack_dir.display()))?;
    let name = format!("pack-{}", pack_sum.to_hex());
    write_durable(pack_dir, &pack_dir.join(format!("{name}.pack")), &pack)?;
    write_durable(pack_dir, &pack_dir.join(format!("{name}.idx")), &idx)?;
    sync_file(pack_dir)
}

fn sha1(bytes: &[u8]) -> Result<ObjectId> {
    let mut h = gix::hash::hasher(gix::hash::Kind::Sha1);
    h.update(bytes);
    h.try_finalize().map_err(git("hashing a pack"))
}

/// `input` as a zlib stream of stored deflate blocks.
fn stored_zlib(input: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x78, 0x01]);
    if input.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    let mut blocks = input.chunks(usize::from(u16::MAX)).peekable();
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&adler32(input).to_be_bytes());
}

fn adler32(bytes: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the most that cannot overflow before the modulo.
    for chunk in bytes.chunks(5552) {
        for &byte in chunk {
            a += u32::from(byte);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

/// CRC-32 (IEEE), as pack indexes record per entry.
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in bytes {
        c = table[usize::from((c as u8) ^ b)] ^ (c >> 8);
    }
    !c
}

/// zlib streams, one per object. Small objects (nearly all of a git-annex
/// branch) are stored uncompressed: deflate gains little on them, and
/// resetting a compressor costs more than writing them.
struct Deflater {
    z: gix::zlib::stream::deflate::Compress,
    buf: Vec<u8>,
}

/// Objects smaller than this are written as stored (uncompressed) zlib streams.
const DEFLATE_MIN: usize = 512;

impl Deflater {
    fn new() -> Deflater {
        Deflater {
            z: gix::zlib::stream::deflate::Compress::new(gix::zlib::Compression::BEST_SPEED),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Appends `input` as one complete zlib stream to `out`.
    fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
        use gix::zlib::Status;
        use gix::zlib::stream::deflate::FlushCompress;
        if input.len() < DEFLATE_MIN {
            stored_zlib(input, out);
            return Ok(());
        }
        self.z.reset();
        let mut rest = input;
        loop {
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .compress(rest, &mut self.buf, FlushCompress::Finish)
                .map_err(git("compressing an object"))?;
            let consumed = (self.z.total_in() - before_in) as usize;
            let produced = (self.z.total_out() - before_out) as usize;
            rest = &rest[consumed..];
            out.extend_from_slice(&self.buf[..produced]);
            match status {
                Status::StreamEnd => return Ok(()),
                Status::Ok => {}
                Status::BufError if produced > 0 || consumed > 0 => {}
                Status::BufError => {
                    return Err(Error::Git("zlib made no progress".into()));
                }
            }
        }
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
/// contain, without duplicates: what git-annex would merge (`siblingBranches`,
/// filtered by `Git.Branch.changed`).
fn new_tips(repo: &gix::Repository, local: Option<ObjectId>) -> Result<Vec<ObjectId>> {
    let platform = repo.references().map_err(git("listing refs"))?;
    let mut tips = Vec::new();
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
        if Some(id) == local || tips.contains(&id) {
            continue;
        }
        if repo.find_commit(id).is_err() {
            tracing::warn!("skipping {name}: not a commit");
            continue;
        }
        if let Some(l) = local
            && contains(repo, l, id)?
        {
            continue;
        }
        tips.push(id);
    }
    Ok(tips)
}

/// Sibling heads known to be in the local branch, per repository. The local
/// branch only moves forward (every update here is compare-and-swapped onto
/// a descendant, and pushes to it are fast-forwards), so once contained, a head
/// stays contained; remembering it keeps a stale remote-tracking ref from
/// costing a history walk on every commit.
static CONTAINED: Mutex<Option<HashMap<PathBuf, HashSet<ObjectId>>>> = Mutex::new(None);

/// Whether the local branch at `local` contains commit `tip`.
fn contains(repo: &gix::Repository, local: ObjectId, tip: ObjectId) -> Result<bool> {
    let key = repo.common_dir().to_path_buf();
    let known = |tip: &ObjectId| {
        CONTAINED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|m| m.get(&key))
            .is_some_and(|s| s.contains(tip))
    };
    if known(&tip) {
        return Ok(true);
    }
    if !is_ancestor(repo, tip, local)? {
        return Ok(false);
    }
    remember_contained(repo, [tip]);
    Ok(true)
}

fn remember_contained(repo: &gix::Repository, tips: impl IntoIterator<Item = ObjectId>) {
    let mut memo = CONTAINED.lock().unwrap_or_else(|p| p.into_inner());
    memo.get_or_insert_with(HashMap::new)
        .entry(repo.common_dir().to_path_buf())
        .or_default()
        .extend(tips);
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
    fn checksums_and_zlib_streams() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        let mut z = Deflater::new();
        for len in [
            0usize,
            1,
            100,
            DEFLATE_MIN - 1,
            DEFLATE_MIN,
            70_000,
            200_000,
        ] {
            let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            z.deflate(&input, &mut out).unwrap();
            let mut back = vec![0u8; len + 16];
            let mut d = gix::zlib::Decompress::new();
            let status = d
                .decompress(&out, &mut back, gix::zlib::FlushDecompress::Finish)
                .unwrap();
            assert_eq!(status, gix::zlib::Status::StreamEnd, "len {len}");
            assert_eq!(d.total_out() as usize, len);
            assert_eq!(&back[..len], &input[..]);
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

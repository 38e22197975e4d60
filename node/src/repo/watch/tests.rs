#![allow(clippy::unwrap_used)]

use super::*;

fn repo(dir: &Path) -> crate::Repo {
    crate::init::init(dir, "w", [7; 16]).unwrap().repo
}

#[test]
fn reports_journal_writes_and_commits_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo(&tmp.path().join("r"));
    let journal = crate::journal::Journal::new(&repo.git_dir);
    let mut w = Watcher::new(&repo.git_dir).unwrap();
    assert!(w.changes().unwrap().is_empty());

    journal
        .modify("trust.log", |_| b"u1 1 timestamp=1s\n".to_vec())
        .unwrap();
    let got = w.changes().unwrap();
    assert_eq!(
        got,
        vec![("trust.log".to_owned(), b"u1 1 timestamp=1s\n".to_vec())]
    );
    assert!(w.changes().unwrap().is_empty(), "reported twice");

    // Rewritten: reported again with the new content.
    journal
        .modify("trust.log", |old| [old, b"u2 0 timestamp=2s\n"].concat())
        .unwrap();
    let got = w.changes().unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].1.ends_with(b"u2 0 timestamp=2s\n"));

    // Committed (the journal file goes): the commit's diff names the file;
    // the catalog merge makes the repeat harmless.
    crate::branch::commit(&repo.git_dir, "test").unwrap();
    let got = w.changes().unwrap();
    assert!(got.iter().any(|(p, _)| p == "trust.log"), "{got:?}");
    assert!(w.changes().unwrap().is_empty());

    // A commit by someone else, with no journal: the diff reports it.
    crate::branch::commit_catalog_files(
        &repo.git_dir,
        &[("group.log".to_owned(), b"u1 g timestamp=3s\n".to_vec())],
        "other",
    )
    .unwrap();
    let got = w.changes().unwrap();
    assert_eq!(
        got,
        vec![("group.log".to_owned(), b"u1 g timestamp=3s\n".to_vec())]
    );
}

use super::*;

fn u(n: u8) -> Uuid {
    Uuid::parse(&format!("00000000-0000-4000-8000-0000000000{n:02}")).unwrap()
}

fn c(n: u8, local: bool, found: Found) -> Checked {
    Checked {
        node: u(n),
        local,
        found,
    }
}

fn bad() -> Found {
    Found::Bad("checksum mismatch".into())
}

#[test]
fn good_copies_need_nothing() {
    let p = plan(&[c(1, true, Found::Good), c(2, false, Found::Good)], 0);
    assert_eq!(p, Plan::default());
}

#[test]
fn a_missing_copy_is_recorded_absent_and_not_copied() {
    let p = plan(&[c(1, false, Found::Missing), c(2, false, Found::Good)], 0);
    assert_eq!(p.steps, vec![Step::RecordAbsent(u(1))]);
    assert_eq!(p.error, None);
}

#[test]
fn a_bad_remote_copy_is_dropped_then_replaced_from_a_good_one() {
    let p = plan(&[c(1, false, bad()), c(2, false, Found::Good)], 7);
    assert_eq!(
        p.steps,
        vec![
            Step::Drop {
                node: u(1),
                keep: u(2)
            },
            Step::RecordAbsent(u(1)),
            Step::Copy {
                from: u(2),
                to: u(1)
            }
        ]
    );
    assert_eq!(p.error, None);
}

#[test]
fn a_bad_local_copy_is_moved_aside_then_replaced() {
    let p = plan(&[c(1, true, Found::Good), c(2, true, bad())], 0);
    assert_eq!(
        p.steps,
        vec![
            Step::MoveAside(u(2)),
            Step::RecordAbsent(u(2)),
            Step::Copy {
                from: u(1),
                to: u(2)
            }
        ]
    );
}

#[test]
fn with_no_good_copy_nothing_is_lost_and_the_key_is_in_error() {
    let p = plan(
        &[
            c(1, false, bad()),
            c(2, true, bad()),
            c(3, false, Found::Missing),
        ],
        0,
    );
    assert_eq!(
        p.steps,
        vec![
            Step::KeepBad(u(1)),
            Step::MoveAside(u(2)),
            Step::RecordAbsent(u(2)),
            Step::RecordAbsent(u(3)),
        ]
    );
    assert!(!p.steps.iter().any(|s| matches!(s, Step::Drop { .. })));
    assert!(p.error.is_some_and(|e| e.contains("2 bad copies")));
}

#[test]
fn an_unchecked_copy_is_neither_a_source_nor_touched() {
    let p = plan(
        &[
            c(1, false, bad()),
            c(2, false, Found::Unchecked("timed out".into())),
        ],
        0,
    );
    assert_eq!(p.steps, vec![Step::KeepBad(u(1))]);
    assert!(p.error.is_some());
}

#[test]
fn sources_spread_over_the_good_copies() {
    let checks = [
        c(1, false, Found::Good),
        c(2, false, Found::Good),
        c(3, false, bad()),
    ];
    let from = |spread| {
        plan(&checks, spread)
            .steps
            .into_iter()
            .find_map(|s| match s {
                Step::Copy { from, .. } => Some(from),
                _ => None,
            })
    };
    assert_ne!(from(0), from(1));
    assert!([Some(u(1)), Some(u(2))].contains(&from(0)));
}

#[test]
fn verdicts_become_findings() {
    assert_eq!(Found::of_verdict(&Verdict::Good), Found::Good);
    assert_eq!(Found::of_verdict(&Verdict::SizeOnly), Found::Good);
    assert!(matches!(
        Found::of_verdict(&Verdict::WrongHash),
        Found::Bad(_)
    ));
    assert!(matches!(
        Found::of_verdict(&Verdict::WrongSize {
            expected: 3,
            got: 4
        }),
        Found::Bad(m) if m.contains("4 bytes")
    ));
}

#[test]
fn progress_counts_findings() {
    let mut p = Progress::default();
    p.add_key(&[c(1, false, Found::Good), c(2, false, bad())], 10);
    p.add_key(&[c(1, false, Found::Missing)], 0);
    assert_eq!(
        (p.keys_checked, p.copies, p.bytes, p.good, p.bad, p.missing),
        (2, 3, 10, 1, 1, 1)
    );
    assert!(!p.clean());
    assert!(Progress::default().clean());
}

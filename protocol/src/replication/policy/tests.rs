use proptest::prelude::*;

use super::*;
use crate::logs::catalog::Family;
use crate::logs::view::View;

const CU: &str = "acae2ff6-6c1e-8bec-b8b9-397a3755f397";
const CU2: &str = "ac000000-0000-8000-8000-000000000002";

fn key(n: u32) -> Key {
    Key::parse(&format!("SHA256E-s{n}--{:064x}.bin", n)).unwrap()
}

fn cu() -> Uuid {
    Uuid::parse(CU).unwrap()
}

#[test]
fn families_are_registered() {
    assert_eq!(Family::of(REPLICATION_LOG), Family::UuidBased);
    assert_eq!(Family::of(&override_path(&key(3))), Family::Map);
    assert!(
        override_path(&key(3)).ends_with(".bin.log.rpl"),
        "{}",
        override_path(&key(3))
    );
    assert_eq!(override_key(&override_path(&key(3))), Some(key(3)));
    assert_eq!(override_key("x/y/nonsense.log.rpl"), None);
    assert_eq!(override_key("fbd/530/SHA256E-s3--x.log"), None);
}

#[test]
fn rule_parses_leniently() {
    assert_eq!(
        Rule::parse("min=2 max=3 grace=300"),
        Rule {
            min: Some(2),
            max: Some(3),
            grace: Some(300)
        }
    );
    // Unknown fields and words, bad values, repeats: ignored field by field.
    let r = Rule::parse("zone=eu min=2 bogus max=-1 grace=1e9 min=5 future=x=y");
    assert_eq!(
        r,
        Rule {
            min: Some(2),
            max: None,
            grace: None
        }
    );
    assert_eq!(Rule::parse("min=99999999999999999999999").min, None);
    assert_eq!(Rule::parse(&format!("min={}", MAX_COPIES + 1)).min, None);
    assert_eq!(
        Rule::parse(&format!("grace={}", MAX_GRACE)).grace,
        Some(MAX_GRACE)
    );
    assert!(Rule::parse("").is_empty());
    let long = format!("min=2 {}", "x".repeat(MAX_VALUE_BYTES));
    assert!(
        Rule::parse(&long).is_empty(),
        "over-long values ignored whole"
    );
}

#[test]
fn cluster_log_round_trips_newest_wins() {
    let a = Rule {
        min: Some(2),
        max: Some(3),
        grace: Some(300),
    };
    let log = record_cluster(b"", &cu(), &a, 100);
    assert_eq!(
        String::from_utf8(log.clone()).unwrap(),
        format!("{CU} min=2 max=3 grace=300 timestamp=100s\n")
    );
    let b = Rule {
        min: Some(3),
        ..Rule::default()
    };
    // A skewed clock still advances past the newest line.
    let log = record_cluster(&log, &cu(), &b, 50);
    let log = record_cluster(&log, &Uuid::parse(CU2).unwrap(), &a, 50);
    let read = read_clusters(&log);
    assert_eq!(read[&cu()], b);
    assert_eq!(read[&Uuid::parse(CU2).unwrap()], a);
    // Garbage lines and non-uuid fields are skipped.
    let mut noisy = log.clone();
    noisy.extend_from_slice(b"\n\x00\xff garbage\n  timestamp=5s\nnot a line\n");
    assert_eq!(
        read_clusters(&noisy).len(),
        read.len() + 1,
        "`not` is a uuid-shaped token"
    );
}

#[test]
fn overrides_replace_fields_and_can_be_removed() {
    let mut cat = Catalog::new();
    cat.insert_content(
        REPLICATION_LOG,
        &record_cluster(
            b"",
            &cu(),
            &Rule {
                min: Some(2),
                max: Some(4),
                grace: Some(60),
            },
            10,
        ),
    );
    let path = override_path(&key(1));
    let o = Rule {
        max: Some(6),
        ..Rule::default()
    };
    let content = record_override(b"", &cu(), Some(&o), 20);
    cat.insert_content(&path, &content);
    let p = Policy::from_catalog(&cat);
    assert_eq!(p.override_count(), 1);
    assert_eq!(
        p.rule(&cu(), &key(1)),
        Rule {
            min: Some(2),
            max: Some(6),
            grace: Some(60)
        }
    );
    assert_eq!(p.rule(&cu(), &key(2)).max, Some(4));
    assert_eq!(p.grace(&cu()), 60);
    assert_eq!(p.grace(&Uuid::parse(CU2).unwrap()), DEFAULT_GRACE);
    // Removal: an empty value, newer.
    let removed = record_override(&content, &cu(), None, 5);
    assert!(String::from_utf8_lossy(&removed).ends_with(&format!("21s {CU} \n")));
    cat.insert_content(&path, &removed);
    let mut p2 = p.clone();
    assert!(p2.apply_file(&path, cat.file(&path).unwrap()));
    assert_eq!(p2.override_count(), 0);
    assert_eq!(p2.rule(&cu(), &key(1)).max, Some(4));
    assert!(!p2.apply_file("uuid.log", cat.file(&path).unwrap()));
}

#[test]
fn set_override_and_cluster() {
    let mut p = Policy::new();
    p.set_cluster(cu(), Rule::parse("min=3"));
    p.set_override(key(1), cu(), Rule::parse("grace=10"));
    assert_eq!(p.rule(&cu(), &key(1)), Rule::parse("min=3 grace=10"));
    p.set_override(key(1), cu(), Rule::default());
    assert_eq!(p.override_count(), 0);
    p.set_override(key(9), cu(), Rule::default());
    assert_eq!(p.override_count(), 0);
}

#[test]
fn resolver_defaults_and_bounds() {
    // Defaults: min = numcopies, max = wanting, grace 300.
    let e = resolve(Rule::default(), 2, 5);
    assert_eq!(
        e,
        Effective {
            min: 2,
            max: 5,
            grace: 300,
            keep: 2
        }
    );
    // max never below min; min never 0.
    let e = resolve(Rule::parse("min=4 max=2"), 1, 9);
    assert_eq!((e.min, e.max, e.keep), (4, 4, 4));
    let e = resolve(Rule::default(), 0, 0);
    assert_eq!((e.min, e.max), (1, 1));
    // A min below numcopies: repair restores min, drops keep numcopies.
    let e = resolve(Rule::parse("min=1 max=5"), 3, 5);
    assert_eq!((e.min, e.max, e.keep), (1, 5, 3));
    let p = Policy::new();
    assert_eq!(effective(&p, &cu(), &key(1), 2, 3).max, 3);
}

fn ctx_with(catalog: &Catalog) -> Context {
    Context::from_view(&View::new(catalog))
}

#[test]
fn preferred_placement_reads_wanted_required_and_policy() {
    let n: Vec<Uuid> = (1..=4)
        .map(|i| Uuid::parse(&format!("0000000{i}-0000-4000-8000-000000000000")).unwrap())
        .collect();
    let mut cat = Catalog::new();
    cat.insert_line("numcopies.log", "1s 2");
    // n1 wants small keys only, n2 wants nothing but requires large ones,
    // n3 has an unparsable expression (wants all), n4 none (wants all).
    cat.insert_line(
        "preferred-content.log",
        &format!("{} smallerthan=100 timestamp=1s", n[0]),
    );
    cat.insert_line(
        "preferred-content.log",
        &format!("{} nothing timestamp=1s", n[1]),
    );
    cat.insert_line(
        "required-content.log",
        &format!("{} largerthan=100 timestamp=1s", n[1]),
    );
    cat.insert_line(
        "preferred-content.log",
        &format!("{} frobnicate=3 timestamp=1s", n[2]),
    );
    let ctx = ctx_with(&cat);
    let mut policy = Policy::new();
    policy.set_cluster(cu(), Rule::parse("max=2"));
    let pp = PreferredPlacement::new(&ctx, &policy, cu(), &n);
    let mut out = Needs::default();
    out.reset(4);
    pp.needs(&key(10), &[], &n, &mut out);
    assert_eq!(out.wanting, vec![true, false, true, true]);
    assert_eq!(out.required, vec![false; 4]);
    assert_eq!((out.effective.min, out.effective.max), (2, 2));
    out.reset(4);
    pp.needs(&key(1000), &[], &n, &mut out);
    assert_eq!(
        out.wanting,
        vec![false, true, true, true],
        "required is wanted too"
    );
    assert_eq!(out.required, vec![false, true, false, false]);
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(0u32..=MAX_COPIES),
        prop::option::of(0u32..=MAX_COPIES),
        prop::option::of(0u64..=MAX_GRACE),
    )
        .prop_map(|(min, max, grace)| Rule { min, max, grace })
}

proptest! {
    #[test]
    fn rule_round_trips(r in arb_rule()) {
        prop_assert_eq!(Rule::parse(&r.value()), r);
    }

    #[test]
    fn cluster_log_round_trips(rules in prop::collection::vec(arb_rule(), 1..6), now in 0i64..1000) {
        let mut log = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            log = record_cluster(&log, &cu(), r, now + i as i64);
        }
        let read = read_clusters(&log);
        prop_assert_eq!(read.get(&cu()), rules.last());
    }

    #[test]
    fn parser_never_panics(s in "\\PC{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Rule::parse(&s);
        let _ = read_clusters(s.as_bytes());
        let _ = read_clusters(&bytes);
        let _ = read_overrides(s.lines());
        let _ = override_key(&s);
    }

    #[test]
    fn effective_is_sane(r in arb_rule(), numcopies in 0u32..5000, wanting in 0u32..5000) {
        let e = resolve(r, numcopies, wanting);
        prop_assert!(e.min >= 1);
        prop_assert!(e.max >= e.min);
        prop_assert!(e.keep >= e.min);
        prop_assert!(e.min <= MAX_COPIES && e.max <= MAX_COPIES && e.keep <= MAX_COPIES);
        prop_assert!(e.grace <= MAX_GRACE);
    }
}

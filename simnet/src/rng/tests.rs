use std::time::Duration;

use super::SimRng;

#[test]
fn same_seed_same_stream() {
    let mut a = SimRng::new(7);
    let mut b = SimRng::new(7);
    let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
    assert_eq!(xs, ys);
    assert_ne!(
        xs,
        (0..16)
            .map(|_| SimRng::new(8).next_u64())
            .collect::<Vec<_>>()
    );
}

#[test]
fn derived_streams_are_independent_of_each_other() {
    let x = SimRng::derive(1, "link a->b").next_u64();
    let mut other = SimRng::derive(1, "link b->a");
    for _ in 0..10 {
        other.next_u64();
    }
    assert_eq!(SimRng::derive(1, "link a->b").next_u64(), x);
    assert_ne!(SimRng::derive(1, "link b->a").next_u64(), x);
    assert_ne!(SimRng::derive(2, "link a->b").next_u64(), x);
}

#[test]
fn ranges() {
    let mut r = SimRng::new(3);
    let range = Duration::from_millis(2)..=Duration::from_millis(5);
    for _ in 0..1000 {
        let d = r.duration_in(&range);
        assert!(range.contains(&d), "{d:?}");
        assert!(r.below(10) < 10);
    }
    let one = Duration::from_millis(4)..=Duration::from_millis(4);
    assert_eq!(r.duration_in(&one), Duration::from_millis(4));
    assert_eq!(r.below(1), 0);
    let mut buf = [0u8; 13];
    r.fill(&mut buf);
    assert!(buf.iter().any(|&b| b != 0));
}

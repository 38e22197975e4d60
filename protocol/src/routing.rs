//! Choosing which node serves a download (annex-spec §4.7, §4.12).
//!
//! git-annex's gateway picks at random among the cheapest nodes its location
//! log lists, with no notion of load or of how many gateways lie on the way (a
//! node behind a second gateway costs the same as a direct one). Here a
//! candidate is a *path* from this gateway to a node: its cost is the sum of
//! its links' costs, so each gateway crossed adds its own link. Among equally
//! cheap paths the least busy node wins (transfers in flight), and among
//! equally busy ones the caller's random number spreads the load.

/// The cost git-annex gives a local ("cheap") remote.
pub const CHEAP: f64 = 100.0;
/// The cost git-annex gives a remote reached over the network ("expensive").
pub const EXPENSIVE: f64 = 200.0;
/// What a link on the far side of another gateway costs. That gateway's own
/// links are not known here; git-annex's default for a node is the cheap one.
pub const FAR_LINK: f64 = CHEAP;

/// One way to reach a node that has the content.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The sum of the path's link costs (see [`path_cost`]).
    pub cost: f64,
    /// Transfers this node is serving now.
    pub busy: u32,
}

/// The cost of a path: its first link's cost (the node's `annex-cost` as this
/// gateway sees it) plus [`FAR_LINK`] for each further gateway crossed.
pub fn path_cost(first_link: f64, gateways_crossed: u32) -> f64 {
    first_link + FAR_LINK * f64::from(gateways_crossed)
}

/// The routes' indices, best first: cheapest, then least busy, then in an order
/// rotated by `tiebreak` (a random number from the caller; this crate has no
/// randomness) among routes equal on both. Every index appears once, so the
/// caller can fail over down the list.
pub fn rank(routes: &[Route], tiebreak: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by(|&a, &b| {
        routes[a]
            .cost
            .total_cmp(&routes[b].cost)
            .then(routes[a].busy.cmp(&routes[b].busy))
            .then(a.cmp(&b))
    });
    // Rotate each run of equal routes by the tiebreak.
    let mut start = 0;
    while start < order.len() {
        let first = &routes[order[start]];
        let mut end = start + 1;
        while end < order.len() {
            let r = &routes[order[end]];
            if r.cost.total_cmp(&first.cost).is_ne() || r.busy != first.busy {
                break;
            }
            end += 1;
        }
        let run = end - start;
        if run > 1 {
            let shift = usize::try_from(tiebreak % run as u64).unwrap_or(0);
            order[start..end].rotate_left(shift);
        }
        start = end;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(cost: f64, busy: u32) -> Route {
        Route { cost, busy }
    }

    #[test]
    fn cheapest_then_idlest() {
        let routes = [r(200.0, 0), r(100.0, 3), r(100.0, 1), r(300.0, 0)];
        assert_eq!(rank(&routes, 0), vec![2, 1, 0, 3]);
    }

    #[test]
    fn a_far_node_costs_its_gateways() {
        // A direct ssh node (200) beats a local-cost node behind one more
        // gateway (ssh link 200 + far link 100).
        let direct = r(EXPENSIVE, 0);
        let far = r(path_cost(EXPENSIVE, 1), 0);
        assert_eq!(rank(&[far, direct], 0), vec![1, 0]);
        assert_eq!(path_cost(CHEAP, 0), CHEAP);
    }

    #[test]
    fn ties_are_spread_by_the_tiebreak() {
        let routes = [r(100.0, 0), r(100.0, 0), r(100.0, 0), r(50.0, 5)];
        let firsts: std::collections::BTreeSet<usize> =
            (0..3).map(|t| rank(&routes, t)[1]).collect();
        assert_eq!(firsts.len(), 3);
        for t in 0..3 {
            assert_eq!(rank(&routes, t)[0], 3);
        }
    }

    proptest! {
        #[test]
        fn a_permutation_sorted_by_cost_then_busy(
            routes in proptest::collection::vec((0u8..5, 0u32..3), 0..12),
            tiebreak in any::<u64>(),
        ) {
            let routes: Vec<Route> = routes
                .into_iter()
                .map(|(c, b)| r(f64::from(c) * 100.0, b))
                .collect();
            let order = rank(&routes, tiebreak);
            let mut seen = order.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..routes.len()).collect::<Vec<_>>());
            for w in order.windows(2) {
                let (a, b) = (&routes[w[0]], &routes[w[1]]);
                prop_assert!(a.cost < b.cost || (a.cost == b.cost && a.busy <= b.busy));
            }
        }
    }
}

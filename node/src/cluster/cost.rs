//! What reaching a node costs, as git-annex reckons it: the lowest layer of
//! a cluster, used by every node kind.

/// A remote's cost, as git-annex's `Config/Cost.hs` (a float, lower is cheaper).
#[derive(Debug, Clone, Copy)]
pub struct Cost(pub f64);

impl PartialEq for Cost {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Cost {}
impl PartialOrd for Cost {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cost {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Cost {
    /// `cheapRemoteCost`.
    pub const CHEAP: Cost = Cost(100.0);
    /// `expensiveRemoteCost`.
    pub const EXPENSIVE: Cost = Cost(200.0);
    /// `veryExpensiveRemoteCost`.
    pub const VERY_EXPENSIVE: Cost = Cost(1000.0);
}

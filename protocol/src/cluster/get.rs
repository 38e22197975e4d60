//! The `GET` cursor: which holder to read from, and from which byte, with
//! failover.
//!
//! git-annex's gateway takes the nodes its location log lists as holders,
//! picks one at random among the cheapest, and relays that one node's answer;
//! a failure fails the request (annex-spec §4.7, §10.1 #2). Here holders are
//! ranked by [`crate::routing::rank`] (path cost from the topology, then load,
//! then the caller's random number), and a holder failing after k bytes is
//! replaced by the next one from byte k. Once the first `DATA` header has gone
//! to the client the total size is fixed: a holder offering another size is
//! passed over.
//!
//! Driving it: `next()` says which node to ask (`GET offset`), the node's
//! `DATA len` goes to [`GetCursor::on_start`], its bytes to
//! [`GetCursor::on_data`], its `VALID`/`INVALID` to [`GetCursor::on_end`], and
//! any error to [`GetCursor::on_failure`]; then `next()` again.

use crate::routing;
use crate::uuid::Uuid;
use crate::verify::Validity;

use super::topology::Cost;

/// A node holding the content, as a candidate to read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: Uuid,
    /// Its route's cost.
    pub cost: Cost,
    /// Transfers it is serving now.
    pub busy: u32,
}

impl Holder {
    /// A holder reached by `route`, serving `busy` transfers now.
    pub fn from_route(route: &super::topology::Route, busy: u32) -> Holder {
        Holder {
            node: route.node.clone(),
            cost: route.cost,
            busy,
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetStep {
    /// Ask `node` for the content from `offset` (`GET offset …`).
    Try { node: Uuid, offset: u64 },
    /// Every byte was sent; `valid` is what to tell the client (`VALID` if no
    /// holder said `INVALID`).
    Complete { total: u64, valid: bool },
    /// No holder left. If `started`, the client has a `DATA` header and
    /// `sent` of its bytes: there is no in-band abort, so the session must
    /// end; else answer `DATA 0`, `INVALID`.
    NoHolderLeft { started: bool, sent: u64 },
}

/// Why [`GetCursor::on_start`] refused a holder's offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offers {offered} bytes in all where {expected} are expected")]
pub struct SizeMismatch {
    pub offered: u64,
    pub expected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between holders.
    Idle,
    /// `next()` named a holder; waiting for its `DATA` header.
    Asked,
    /// Bytes are flowing from the current holder.
    Streaming,
}

/// The cursor (see the module docs).
#[derive(Debug, Clone)]
pub struct GetCursor {
    order: Vec<Uuid>,
    next: usize,
    offset: u64,
    start: u64,
    total: Option<u64>,
    started: bool,
    valid: bool,
    state: State,
}

impl GetCursor {
    /// Holders ranked best first; the client asked from `offset`; `size` is
    /// the key's size if it has one. `tiebreak` is a random number.
    pub fn new(holders: &[Holder], offset: u64, size: Option<u64>, tiebreak: u64) -> GetCursor {
        let routes: Vec<routing::Route> = holders
            .iter()
            .map(|h| routing::Route {
                cost: h.cost.to_f64(),
                busy: h.busy,
            })
            .collect();
        let order = routing::rank(&routes, tiebreak)
            .into_iter()
            .filter_map(|i| holders.get(i).map(|h| h.node.clone()))
            .collect();
        GetCursor {
            order,
            next: 0,
            offset,
            start: offset,
            total: size,
            started: false,
            valid: true,
            state: State::Idle,
        }
    }

    /// The byte the next holder is asked from.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The total size, once known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Whether a `DATA` header went to the client.
    pub fn started(&self) -> bool {
        self.started
    }

    fn complete(&self) -> bool {
        self.started && self.total.is_some_and(|t| self.offset >= t)
    }

    /// What to do next. While a holder is asked or streaming, repeats it (so
    /// this is not an iterator).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> GetStep {
        if self.complete() {
            return GetStep::Complete {
                total: self.total.unwrap_or(self.offset),
                valid: self.valid,
            };
        }
        if self.state != State::Idle
            && let Some(node) = self.next.checked_sub(1).and_then(|i| self.order.get(i))
        {
            return GetStep::Try {
                node: node.clone(),
                offset: self.offset,
            };
        }
        match self.order.get(self.next) {
            Some(node) => {
                self.next += 1;
                self.state = State::Asked;
                GetStep::Try {
                    node: node.clone(),
                    offset: self.offset,
                }
            }
            None => GetStep::NoHolderLeft {
                started: self.started,
                sent: self.offset.saturating_sub(self.start),
            },
        }
    }

    /// The asked holder answered `DATA len`. `Ok(Some(total))` the first time:
    /// send the client `DATA total − client's offset`; `Ok(None)` after a
    /// failover (the client already has the header). A holder offering a
    /// different total is refused: call [`GetCursor::on_failure`].
    pub fn on_start(&mut self, len: u64) -> Result<Option<u64>, SizeMismatch> {
        let offered = self.offset.saturating_add(len);
        if let Some(expected) = self.total
            && expected != offered
        {
            return Err(SizeMismatch { offered, expected });
        }
        self.total = Some(offered);
        self.state = State::Streaming;
        if self.started {
            Ok(None)
        } else {
            self.started = true;
            Ok(Some(offered.saturating_sub(self.start)))
        }
    }

    /// `n` more bytes were relayed to the client (capped at the total).
    pub fn on_data(&mut self, n: u64) {
        let end = self.total.unwrap_or(u64::MAX);
        self.offset = self.offset.saturating_add(n).min(end);
    }

    /// The holder's bytes ended with `VALID`/`INVALID` (or neither, v0).
    pub fn on_end(&mut self, validity: Validity) {
        self.valid &= validity != Validity::Invalid;
        self.state = State::Idle;
    }

    /// The holder failed (refused, closed, sent too few bytes): the next one
    /// is asked from the same byte.
    pub fn on_failure(&mut self) {
        self.state = State::Idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Uuid {
        Uuid::parse(s).unwrap()
    }

    fn h(node: &str, cost: u64, busy: u32) -> Holder {
        Holder {
            node: u(node),
            cost: Cost::from_hundredths(cost * 100),
            busy,
        }
    }

    fn try_step(node: &str, offset: u64) -> GetStep {
        GetStep::Try {
            node: u(node),
            offset,
        }
    }

    #[test]
    fn holders_from_routes() {
        let r = super::super::topology::Route {
            node: u("n"),
            cost: Cost::from_hundredths(350),
            hops: vec![u("g")],
            name: "G-n".into(),
        };
        assert_eq!(Holder::from_route(&r, 2), h("n", 0, 2).with_cost(350));
    }

    impl Holder {
        fn with_cost(mut self, hundredths: u64) -> Holder {
            self.cost = Cost::from_hundredths(hundredths);
            self
        }
    }

    #[test]
    fn cheapest_first_then_complete() {
        let mut c = GetCursor::new(&[h("b", 200, 0), h("a", 100, 0)], 0, Some(10), 0);
        assert_eq!(c.next(), try_step("a", 0));
        assert_eq!(c.on_start(10), Ok(Some(10)));
        c.on_data(10);
        c.on_end(Validity::Valid);
        assert_eq!(
            c.next(),
            GetStep::Complete {
                total: 10,
                valid: true
            }
        );
    }

    #[test]
    fn mid_transfer_failover_resumes_at_the_byte() {
        let mut c = GetCursor::new(
            &[h("a", 100, 0), h("b", 200, 0), h("c", 300, 0)],
            2,
            None,
            0,
        );
        assert_eq!(c.next(), try_step("a", 2));
        assert_eq!(c.on_start(8), Ok(Some(8)), "client asked from 2 of 10");
        c.on_data(3);
        c.on_failure();
        assert_eq!(c.next(), try_step("b", 5));
        // b offers a different total: passed over.
        assert_eq!(
            c.on_start(100),
            Err(SizeMismatch {
                offered: 105,
                expected: 10
            })
        );
        c.on_failure();
        assert_eq!(c.next(), try_step("c", 5));
        assert_eq!(c.on_start(5), Ok(None), "header already sent");
        c.on_data(5);
        c.on_end(Validity::Invalid);
        assert_eq!(
            c.next(),
            GetStep::Complete {
                total: 10,
                valid: false
            }
        );
    }

    #[test]
    fn no_holder_left() {
        let mut c = GetCursor::new(&[], 0, Some(4), 0);
        assert_eq!(
            c.next(),
            GetStep::NoHolderLeft {
                started: false,
                sent: 0
            }
        );
        let mut c = GetCursor::new(&[h("a", 1, 0)], 0, Some(4), 0);
        assert_eq!(c.next(), try_step("a", 0));
        c.on_failure();
        assert_eq!(
            c.next(),
            GetStep::NoHolderLeft {
                started: false,
                sent: 0
            }
        );
        let mut c = GetCursor::new(&[h("a", 1, 0)], 0, Some(4), 0);
        c.next();
        assert_eq!(c.on_start(4), Ok(Some(4)));
        c.on_data(1);
        c.on_failure();
        assert_eq!(
            c.next(),
            GetStep::NoHolderLeft {
                started: true,
                sent: 1
            }
        );
    }

    #[test]
    fn repeats_the_current_holder_and_caps_data() {
        let mut c = GetCursor::new(&[h("a", 1, 0), h("b", 1, 5)], 0, None, 0);
        assert_eq!(c.next(), try_step("a", 0));
        assert_eq!(c.next(), try_step("a", 0), "still waiting for a");
        assert_eq!(c.on_start(3), Ok(Some(3)));
        c.on_data(100);
        assert_eq!(c.offset(), 3);
        assert_eq!(c.total(), Some(3));
        assert!(matches!(c.next(), GetStep::Complete { total: 3, .. }));
    }

    #[test]
    fn an_empty_key_completes_after_its_header() {
        let mut c = GetCursor::new(&[h("a", 1, 0)], 0, Some(0), 0);
        assert_eq!(c.next(), try_step("a", 0));
        assert_eq!(c.on_start(0), Ok(Some(0)));
        assert!(c.started());
        assert!(matches!(c.next(), GetStep::Complete { total: 0, .. }));
    }

    #[test]
    fn ties_spread_by_tiebreak() {
        let hs = [h("a", 1, 0), h("b", 1, 0)];
        let firsts: std::collections::BTreeSet<String> = (0..2)
            .filter_map(|t| match GetCursor::new(&hs, 0, None, t).next() {
                GetStep::Try { node, .. } => Some(node.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(firsts.len(), 2);
    }
}

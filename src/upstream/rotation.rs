//! Weighted round robin over a pool's targets, for the default balancer.
//!
//! Pingora's `LoadBalancer::select_with` builds a `HashSet` per selection (to skip targets it
//! has already offered), SipHashes each candidate into it and clones the chosen `Backend`,
//! extensions and all: an allocation or three and some 2,000 instructions per request. Here a
//! selection is one atomic add and an index into a table built when the membership changes; a
//! target in turn that is refused (unhealthy, drained, tried, breaker open) passes the turn
//! on, as Pingora's round robin does.

use super::Target;
use arc_swap::ArcSwap;
use pingora_load_balancing::Backend;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many turns one selection takes before looking at every target once instead.
const MAX_TURNS: usize = 256;

/// The rotation of one pool.
#[derive(Default)]
pub struct Rotation {
    cursor: AtomicUsize,
    table: ArcSwap<Table>,
}

/// The targets of one membership: each repeated by its weight, and once each.
#[derive(Default)]
struct Table {
    /// The membership it was built from, to notice a change by pointer.
    members: Option<Arc<BTreeSet<Backend>>>,
    weighted: Box<[Arc<Target>]>,
    distinct: Box<[Arc<Target>]>,
}

impl Table {
    fn new(members: Arc<BTreeSet<Backend>>) -> Table {
        let distinct: Box<[Arc<Target>]> = members
            .iter()
            .filter_map(|b| Target::of(b).cloned())
            .collect();
        let weighted = distinct
            .iter()
            .flat_map(|t| std::iter::repeat_n(t, t.weight.max(1)))
            .cloned()
            .collect();
        Table {
            members: Some(members),
            weighted,
            distinct,
        }
    }
}

impl Rotation {
    /// The next target of `members` in turn that `accept` takes.
    pub fn select(
        &self,
        members: Arc<BTreeSet<Backend>>,
        accept: impl Fn(&Target) -> bool,
    ) -> Option<Arc<Target>> {
        let mut table = self.table.load();
        if !table
            .members
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &members))
        {
            // Membership changed (discovery, a reload): the first request to see it rebuilds.
            self.table.store(Arc::new(Table::new(members)));
            table = self.table.load();
        }
        let slots = table.weighted.len();
        if slots == 0 {
            return None;
        }
        // Each try takes the next turn, so the turns of refused targets spread over the rest
        // instead of all going to the one after them.
        for _ in 0..slots.min(MAX_TURNS) {
            let t = &table.weighted[self.cursor.fetch_add(1, Ordering::Relaxed) % slots];
            if accept(t) {
                return Some(Arc::clone(t));
            }
        }
        // Heavy weights on refused targets used every try: look at each target once.
        table.distinct.iter().find(|t| accept(t)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Keeper;
    use crate::upstream::Upstream;

    fn pool(targets: &str) -> Upstream {
        let text = format!("targets = [{targets}]");
        let config: crate::config::UpstreamConfig = toml::from_str(&text).unwrap();
        Upstream::build("u", &config, &mut Keeper::new(None)).unwrap()
    }

    fn picks(u: &Upstream, n: usize, skip: impl Fn(&Target) -> bool) -> Vec<String> {
        (0..n)
            .map(|_| u.select(b"", &skip).map(|t| t.label.to_string()).unwrap())
            .collect()
    }

    #[test]
    fn turns_follow_the_weights() {
        let u = pool(r#"{ addr = "127.0.0.1:1", weight = 2 }, "127.0.0.1:2""#);
        let seen = picks(&u, 300, |_| false);
        let first = seen.iter().filter(|l| l.ends_with(":1")).count();
        assert_eq!(first, 200, "{seen:?}");
    }

    #[test]
    fn a_refused_target_passes_its_turn_on_evenly() {
        let u = pool(r#""127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4""#);
        let refused = |t: &Target| t.label.ends_with(":2") || t.label.ends_with(":3");
        let seen = picks(&u, 40, refused);
        let ones = seen.iter().filter(|l| l.ends_with(":1")).count();
        let fours = seen.iter().filter(|l| l.ends_with(":4")).count();
        assert_eq!((ones, fours), (20, 20), "{seen:?}");
        assert!(u.select(b"", |_| true).is_none(), "every target refused");
    }

    #[test]
    fn a_heavy_refused_target_does_not_hide_the_others() {
        let u = pool(r#"{ addr = "127.0.0.1:1", weight = 1000 }, "127.0.0.1:2""#);
        let seen = picks(&u, 5, |t| t.label.ends_with(":1"));
        assert!(seen.iter().all(|l| l.ends_with(":2")), "{seen:?}");
    }
}

//! The store's key bound, eviction and scopes.

use stormwatch_model::{Node, NodeKind, Sym};

use super::*;

const MINUTE: u64 = 60 * 1_000_000_000;

/// Edges to different operations of one service: their scopes above are two keys.
fn edge(i: usize) -> Edge {
    Edge {
        from: Node { service: Sym::new("gateway"), operation: Sym::new("GET /"), kind: NodeKind::Service },
        to: Node { service: Sym::new("svc"), operation: Sym::new(&format!("GET /x{i}")), kind: NodeKind::Service },
    }
}

#[test]
fn a_full_table_evicts_only_young_idle_baselines() {
    let mut store = BaselineStore::new(10);
    store.evict_young_below(5);
    // Two mature baselines (5 samples), seen at 0; eight young ones (2 samples) from a
    // flood at 0, one of them seen again at 50 minutes.
    for i in 0..10 {
        for _ in 0..if i < 2 { 5 } else { 2 } {
            store.observe_fanout(edge(i), &[1], 0);
        }
    }
    store.observe_fanout(edge(9), &[1], 50 * MINUTE);
    // Full, and nothing idle for an hour yet: refused.
    store.observe_fanout(edge(10), &[1], 30 * MINUTE);
    assert_eq!((store.fanout.len(), store.stats().capped_observations), (10, 1));
    // Swept less than a minute ago: refused without another scan.
    store.observe_fanout(edge(11), &[1], 30 * MINUTE + MINUTE / 2);
    assert_eq!(store.stats().capped_observations, 2);
    // Past an hour: the seven idle young ones go, the new key is learned.
    store.observe_fanout(edge(12), &[1], 61 * MINUTE);
    assert_eq!(store.stats().evicted_young, 7);
    let kept: Vec<usize> = (0..13).filter(|i| store.fanout.contains_key(&edge(*i))).collect();
    assert_eq!(kept, [0, 1, 9, 12], "the mature, the recently seen young one, the new one");
    // Mature baselines are never evicted, however idle.
    store.observe_fanout(edge(13), &[1], 1_000 * MINUTE);
    assert!(store.fanout.contains_key(&edge(0)) && store.fanout.contains_key(&edge(1)));
}

#[test]
fn without_a_learning_minimum_nothing_is_evicted() {
    let mut store = BaselineStore::new(2);
    store.observe_fanout(edge(0), &[1], 0);
    store.observe_fanout(edge(1), &[1], 0);
    store.observe_fanout(edge(2), &[1], 1_000 * MINUTE);
    assert_eq!((store.fanout.len(), store.stats().evicted_young, store.stats().capped_observations), (2, 0, 1));
}

#[test]
fn calls_per_parent_are_learned_by_the_scopes_above_the_edge_and_held_ones_are_not() {
    let mut store = BaselineStore::new(10);
    let db = Edge {
        from: edge(0).to,
        to: Node { service: Sym::new("postgres"), operation: Sym::new("SELECT ?"), kind: NodeKind::Database },
    };
    store.observe_fanout(edge(0), &[1], 0);
    store.observe_fanout(edge(1), &[3], 0);
    store.observe_fanout(db, &[5], 0);
    store.hold_fanout(edge(2), 400, 0);
    let pair = EdgeScope::ServicePair { from: Sym::new("gateway"), to: Sym::new("svc"), kind: NodeKind::Service };
    let kind = EdgeScope::CallerToKind { from: Sym::new("gateway"), kind: NodeKind::Service };
    assert_eq!(EdgeScope::above(&edge(7)), [pair, kind]);
    assert_eq!((store.edge_scopes[&pair].samples(), store.edge_scopes[&pair].max()), (2, 3));
    assert_eq!(store.edge_scopes[&kind].samples(), 2);
    assert_eq!(store.edge_scopes.len(), 4, "gateway's two and svc's two");
    assert_eq!((store.fanout[&edge(2)].samples(), store.fanout[&edge(2)].held()), (0, 1));
    assert_eq!(pair.to_string(), "every call from gateway to svc");
    assert_eq!(EdgeScope::above(&db)[1].name(), "svc -> any database");
    assert_eq!(EdgeScope::above(&db)[1].to_string(), "every call from svc to a database");
}

#[test]
fn evicted_window_baselines_take_their_daily_profiles_along() {
    let mut store = BaselineStore::new(1);
    store.evict_young_below(5);
    store.observe_window(WindowMetric::WorkPerEntry, edge(0), 1_000, 0);
    store.observe_seasonal(WindowMetric::WorkPerEntry, edge(0), 1_000, 0);
    store.observe_window(WindowMetric::WorkPerEntry, edge(1), 1_000, 120 * MINUTE);
    assert!(store.windows.contains_key(&(WindowMetric::WorkPerEntry, edge(1))));
    assert!(store.seasonal.is_empty(), "the evicted baseline's profile stayed");
}

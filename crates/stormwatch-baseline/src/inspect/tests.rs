//! The rows, their queries and diffs, from a small store.

use stormwatch_model::{Node, NodeKind, Sym};

use super::*;
use crate::WindowMetric;

fn edge(from: &str, to: &str, kind: NodeKind) -> Edge {
    Edge {
        from: Node { service: Sym::new(from), operation: Sym::new("GET /x"), kind: NodeKind::Service },
        to: Node { service: Sym::new(to), operation: Sym::new("SELECT ?"), kind },
    }
}

fn store() -> BaselineStore {
    let mut store = BaselineStore::new(100);
    let db = edge("reviews", "postgresql", NodeKind::Database);
    let svc = edge("gateway", "reviews", NodeKind::Service);
    for i in 0..200 {
        store.observe_fanout(db, &[1 + i % 5], 1_000 + i);
        store.observe_fanout(svc, &[1], 1_000 + i);
    }
    for i in 0..40 {
        store.observe_window(WindowMetric::WorkPerEntry, db, 2_500 + i % 10, 5_000 + i);
    }
    // Beyond anything the young window baseline learned: held back.
    store.observe_window(WindowMetric::WorkPerEntry, db, 9_000, 5_100);
    store
}

#[test]
fn rows_say_what_was_learned_in_its_unit() {
    let rows = rows(&store());
    assert_eq!(rows.len(), 7, "2 edges, a window and each edge's 2 scopes: {rows:#?}");
    let pair = rows.iter().find(|r| r.table == "pair_per_parent" && r.to_kind.as_deref() == Some("database"));
    assert_eq!(pair.unwrap().edge.as_deref(), Some("reviews -> postgresql"));
    let kind = rows.iter().find(|r| r.table == "kind_per_parent" && r.to_kind.as_deref() == Some("service"));
    assert_eq!((kind.unwrap().edge.as_deref(), kind.unwrap().samples), (Some("gateway -> any service"), 200));
    let window = rows.iter().find(|r| r.table == "window:work_per_entry").unwrap();
    assert_eq!(window.edge.as_deref(), Some("reviews `GET /x` -> postgresql `SELECT ?`"));
    assert_eq!(window.to_kind.as_deref(), Some("database"));
    assert!((2.5..=2.6).contains(&window.median), "thousandths are shown as calls: {window:?}");
    assert_eq!((window.samples, window.held), (40, 1));
    let fanout = rows.iter().find(|r| r.table == "calls_per_parent" && r.to_kind.as_deref() == Some("database"));
    let fanout = fanout.unwrap();
    assert_eq!((fanout.median, fanout.p99, fanout.samples, fanout.since_unix_nano), (3.0, 5.0, 200, 1_000));
}

/// What a reader's copy needs: every row the first time, then each changed baseline once
/// however often it learned, nothing when nothing changed, and every row again after
/// baselines were evicted.
#[test]
fn changed_rows_are_listed_once_and_everything_after_an_eviction() {
    let mut store = store();
    let (all, first) = take_changed(&mut store);
    assert!(all);
    let mut rendered: Vec<BaselineRow> = first.iter().map(RowFigures::render).collect();
    rendered.sort_by_cached_key(BaselineRow::key);
    assert_eq!(rendered, rows(&store), "the figures render as the rows");
    assert_eq!(take_changed(&mut store), (false, Vec::new()));
    let db = edge("reviews", "postgresql", NodeKind::Database);
    for i in 0..10 {
        store.observe_fanout(db, &[2], 2_000 + i);
    }
    let (all, changed) = take_changed(&mut store);
    assert!(!all);
    let keys: Vec<RowKey> = changed.iter().map(|f| f.key).collect();
    assert_eq!(keys.len(), 3, "the edge and its two scopes, once each: {keys:?}");
    assert_eq!(keys[0], RowKey::Fanout(db));
    assert_eq!(changed[0].render().samples, 210);
    let mut before = first.iter().find(|f| f.key == RowKey::Fanout(db)).unwrap().render();
    changed[0].refresh(&mut before);
    assert_eq!(before, changed[0].render(), "a refreshed row is the row rendered anew");
    let window = first.iter().find(|f| matches!(f.key, RowKey::Window(..))).unwrap();
    let mut row = window.render();
    row.median = 0.0;
    window.refresh(&mut row);
    assert_eq!(row, window.render(), "in the table's unit");
    store.observe_fanout(db, &[2], 3_000);
    assert_eq!(take_changed(&mut store).1.len(), 3, "listed again after it was taken");

    // A full table evicts a young, idle baseline to make room: listed anew, whole.
    let mut store = BaselineStore::new(2);
    store.evict_young_below(100);
    store.observe_fanout(db, &[1], 0);
    let _ = take_changed(&mut store);
    store.observe_fanout(edge("a", "b", NodeKind::Service), &[1], 1);
    let late = crate::EVICT_IDLE_NANOS * 2;
    store.observe_fanout(edge("c", "d", NodeKind::Service), &[1], late);
    assert!(store.stats().evicted_young > 0);
    let (all, rows_now) = take_changed(&mut store);
    assert!(all && rows_now.iter().all(|f| store.distribution(&f.key).is_some()));
}

#[test]
fn queries_filter_sort_and_limit_and_name_bad_sort_keys() {
    let rows = rows(&store());
    let q = |query: Query| query.apply(rows.clone()).unwrap();
    // The edge, its window and its service pair; the other scope names no callee.
    assert_eq!(q(Query { service: Some("postgresql".into()), ..Query::default() }).len(), 3);
    assert_eq!(q(Query { service: Some("gateway".into()), ..Query::default() }).len(), 3);
    assert_eq!(q(Query { to_kind: Some("database".into()), ..Query::default() }).len(), 4);
    assert_eq!(q(Query { table: Some("window".into()), ..Query::default() }).len(), 1);
    assert_eq!(q(Query { matching: Some("-> reviews".into()), ..Query::default() }).len(), 2);
    let by_p99 = q(Query { sort: Some("p99".into()), limit: Some(1), ..Query::default() });
    assert_eq!(by_p99[0].p99, 5.0);
    let by_samples = q(Query::default());
    assert_eq!(by_samples[0].samples, 200);
    let error = Query { sort: Some("size".into()), ..Query::default() }.apply(rows).unwrap_err().to_string();
    assert!(error.contains("\"size\"") && error.contains("p99"), "{error}");
}

#[test]
fn recent_windows_score_against_the_p99_and_sort_first() {
    let mut rows = rows(&store());
    let edge = "reviews `GET /x` -> postgresql `SELECT ?`".to_string();
    let windows = vec![BTreeMap::from([(edge.clone(), 2.5)]), BTreeMap::from([(edge, 7.8)])];
    annotate(&mut rows, &windows);
    let window = rows.iter().find(|r| r.table == "window:work_per_entry").unwrap();
    assert_eq!(window.recent, vec![2.5, 7.8]);
    assert!(window.score.unwrap() > 2.9, "{window:?}");
    let sorted = Query { sort: Some("score".into()), ..Query::default() }.apply(rows).unwrap();
    assert_eq!(sorted[0].table, "window:work_per_entry");
}

#[test]
fn a_diff_lists_new_gone_and_moved_baselines_but_not_mere_learning() {
    let before = store();
    let mut after = before.clone();
    let db = edge("reviews", "postgresql", NodeKind::Database);
    after.observe_fanout(edge("gateway", "reviews", NodeKind::Service), &[1], 9_000);
    for i in 0..400 {
        after.observe_fanout(db, &[40], 9_000 + i);
    }
    after.observe_fanout(edge("gateway", "redis", NodeKind::Cache), &[2], 9_000);
    after.windows.clear();
    // The scopes above the edges move with them; this is about the edges' own rows.
    let own = |store: &BaselineStore| {
        let mut rows = rows(store);
        rows.retain(|row| !["pair_per_parent", "kind_per_parent"].contains(&row.table.as_str()));
        rows
    };
    let changes = diff(&own(&before), &own(&after));
    let summary: Vec<(bool, bool, &str)> =
        changes.iter().map(|c| (c.before.is_some(), c.after.is_some(), c.key.split(' ').next().unwrap())).collect();
    assert_eq!(
        summary,
        vec![
            (false, true, "calls_per_parent"),
            (true, true, "calls_per_parent"),
            (true, false, "window:work_per_entry")
        ],
        "{changes:#?}"
    );
    assert!(changes[1].after.as_ref().unwrap().p99 > changes[1].before.as_ref().unwrap().p99);
}

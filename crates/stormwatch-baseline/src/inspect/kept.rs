//! Rows kept to be read many times (the admin API's published view): each baseline's figures
//! and its key text, the names sliced from the key, a row rendered only when shown. Half what
//! rendered rows cost, and the names are stored once.

use std::sync::Arc;

use super::{key_of, BaselineRow, RowFigures, RowNames};

/// One baseline's figures and names, kept: [`RowNames`] reads its names without making them,
/// [`RowNames::shown`] renders it.
#[derive(Clone, Debug)]
pub struct KeptRow {
    figures: RowFigures,
    /// [`BaselineRow::key`]: `table entry edge`, `-` for either absent (then its flag says so).
    key: Arc<str>,
    /// Bytes of the table's and the entry's parts of `key`.
    table_len: u16,
    entry_len: u32,
    has_entry: bool,
    has_edge: bool,
}

impl KeptRow {
    /// The row of `figures`, named once.
    pub fn new(figures: RowFigures) -> KeptRow {
        let row = figures.render();
        KeptRow {
            figures,
            key: Arc::from(key_of(&row.table, row.entry.as_deref(), row.edge.as_deref())),
            table_len: row.table.len() as u16,
            entry_len: row.entry.as_ref().map_or(1, String::len) as u32,
            has_entry: row.entry.is_some(),
            has_edge: row.edge.is_some(),
        }
    }

    /// Its key text ([`BaselineRow::key`]), shared.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// Its figures.
    pub fn figures(&self) -> &RowFigures {
        &self.figures
    }

    /// The same baseline's figures, newer: the names stay.
    pub fn refresh(&mut self, figures: RowFigures) {
        debug_assert_eq!(self.figures.key, figures.key);
        self.figures = figures;
    }

    fn entry_start(&self) -> usize {
        usize::from(self.table_len) + 1
    }

    fn edge_start(&self) -> usize {
        self.entry_start() + self.entry_len as usize + 1
    }
}

impl RowNames for KeptRow {
    fn table(&self) -> &str {
        &self.key[..usize::from(self.table_len)]
    }
    fn edge(&self) -> Option<&str> {
        self.has_edge.then(|| &self.key[self.edge_start()..])
    }
    fn entry(&self) -> Option<&str> {
        self.has_entry.then(|| &self.key[self.entry_start()..self.edge_start() - 1])
    }
    fn to_kind(&self) -> Option<&str> {
        self.figures.key.callee_kind().map(|kind| kind.as_str())
    }
    fn shown(&self) -> BaselineRow {
        let (table, edge, to_kind) = (self.table().into(), self.edge().map(Into::into), self.to_kind().map(Into::into));
        self.figures.row(table, edge, to_kind, self.entry().map(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use stormwatch_model::{Edge, Node, NodeKind, RootClass, Sym};

    use super::*;
    use crate::inspect::{figures, Query, RowKey};
    use crate::{BaselineStore, RequestMetric, WindowMetric};

    /// A store with a baseline in every table (names with spaces, backquotes, `-` and ` -> `
    /// in them, as names may have).
    fn store() -> BaselineStore {
        let mut store = BaselineStore::new(100);
        let class =
            RootClass { service: Sym::new("web - edge"), operation: Sym::new("GET /a -> b"), query_shape: None };
        let shaped =
            RootClass { service: Sym::new("-"), operation: Sym::new("GET `x`"), query_shape: Some(Sym::new("q&r")) };
        let db = Edge {
            from: Node::service(Sym::new("web - edge"), Sym::new("GET /a -> b")),
            to: Node { service: Sym::new("postgresql"), operation: Sym::new("SELECT - `t`"), kind: NodeKind::Database },
        };
        let cache = Edge {
            from: Node::service(Sym::new("-"), Sym::new("GET `x`")),
            to: Node { service: Sym::new("redis"), operation: Sym::new("GET"), kind: NodeKind::Cache },
        };
        for (i, at) in (0..40u64).map(|i| (i, 1_000 + i)) {
            for (class, edge) in [(class, db), (shaped, cache)] {
                store.observe_fanout(edge, &[1 + i % 3], at);
                store.observe_request_edge(class, edge, 2 + i % 4, at);
                store.observe_request_work(class, edge, 300 + i, at);
                store.observe_request_bytes(class, edge, 4_000 + i, at);
                store.observe_request_total(class, RequestMetric::Spans, 10 + i % 5, at);
                store.observe_window(WindowMetric::WorkPerEntry, edge, 900 + i, at);
                store.observe_window_class(class, edge, 500 + i, at);
            }
        }
        store
    }

    /// A kept row shows as the row rendered from its figures, names what it shows, and passes
    /// the same filters; refreshed, it is the newer figures' row.
    #[test]
    fn kept_rows_show_and_filter_as_rendered_rows() {
        let mut store = store();
        let all = figures(&store);
        assert!(all.len() > 20, "every table: {}", all.len());
        let queries = [
            Query { service: Some("web - edge".into()), ..Query::default() },
            Query { service: Some("-".into()), ..Query::default() },
            Query { to_kind: Some("cache".into()), ..Query::default() },
            Query { table: Some("window".into()), ..Query::default() },
            Query { table: Some("service_per_request".into()), ..Query::default() },
            Query { matching: Some("-> b` -> postgresql".into()), ..Query::default() },
            Query { matching: Some("`x?q&r`".into()), ..Query::default() },
            Query { matching: Some("- -".into()), ..Query::default() },
        ];
        let mut passed = vec![0; queries.len()];
        for figures in &all {
            let (kept, rendered) = (KeptRow::new(*figures), figures.render());
            assert_eq!(kept.shown(), rendered);
            assert_eq!(
                (kept.table(), kept.edge(), kept.entry(), kept.to_kind()),
                (rendered.table(), rendered.edge(), rendered.entry(), rendered.to_kind())
            );
            assert_eq!(**kept.key(), rendered.key());
            for (query, passed) in queries.iter().zip(&mut passed) {
                assert_eq!(query.matches(&kept), query.matches(&rendered), "{query:?} {rendered:?}");
                *passed += usize::from(query.matches(&kept));
            }
        }
        assert!(passed.iter().take(6).all(|n| *n > 0), "each filter keeps some rows: {passed:?}");

        let mut kept = KeptRow::new(all[0]);
        let RowKey::Fanout(edge) = all[0].key else { panic!("the first table is calls_per_parent: {:?}", all[0]) };
        store.observe_fanout(edge, &[7], 9_000);
        let newer = figures(&store).into_iter().find(|f| f.key == all[0].key).unwrap();
        kept.refresh(newer);
        assert_eq!(kept.shown(), newer.render());
        assert_eq!(kept.shown().samples, 41);
    }
}

//! Which baselines changed since they were last listed, so a reader's copy of them (the admin
//! API's published rows) is brought up to date with what changed, not rebuilt from every
//! baseline. Each changed baseline's key is listed once (its distribution remembers that it
//! is), so the list never holds more keys than the store; a change to a whole table (a store
//! decoded, window baselines adopted, young baselines evicted) lists everything at once.

use crate::inspect::RowKey;
use crate::{BaselineStore, Distribution};

/// The keys of the baselines learned since the last [`crate::BaselineStore::take_changes`].
#[derive(Clone, Debug)]
pub(crate) struct Changes {
    /// Each once, in the order they first changed.
    pub(crate) keys: Vec<RowKey>,
    /// Every baseline may have changed (and some may be gone): `keys` is not kept.
    pub(crate) all: bool,
}

impl Default for Changes {
    /// A new store: everything in it is new to a reader.
    fn default() -> Changes {
        Changes { keys: Vec::new(), all: true }
    }
}

impl Changes {
    /// Lists `key` unless it is already, after its `distribution` learned something.
    pub(crate) fn note<K>(&mut self, distribution: &mut Distribution, key: K, row: fn(K) -> RowKey) {
        if !self.all && !distribution.listed.0 {
            distribution.listed.0 = true;
            self.keys.push(row(key));
        }
    }
}

/// What [`crate::BaselineStore::take_changes`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Every baseline may have changed, and some may be gone: list them all again.
    All,
    /// These changed (a key whose baseline is gone since is skipped by lookups).
    Keys(Vec<RowKey>),
}

impl BaselineStore {
    /// The baselines learned since the last call, and forgets them: the next call lists what
    /// changes from now on.
    pub fn take_changes(&mut self) -> Changed {
        if std::mem::take(&mut self.changes.all) {
            self.changes.keys = Vec::new();
            self.for_each_distribution_mut(|d| d.listed.0 = false);
            return Changed::All;
        }
        let keys = std::mem::take(&mut self.changes.keys);
        for key in &keys {
            if let Some(distribution) = self.distribution_mut(key) {
                distribution.listed.0 = false;
            }
        }
        Changed::Keys(keys)
    }

    /// The baseline a row names, if it is (still) there.
    pub fn distribution(&self, key: &RowKey) -> Option<&Distribution> {
        match *key {
            RowKey::Fanout(edge) => self.fanout.get(&edge),
            RowKey::RequestEdge(class, edge) => self.request_edges.get(&(class, edge)),
            RowKey::RequestWork(class, edge) => self.request_work.get(&(class, edge)),
            RowKey::RequestBytes(class, edge) => self.request_bytes.get(&(class, edge)),
            RowKey::RequestTotal(class, metric) => self.request_totals.get(&(class, metric)),
            RowKey::ClassScope(scope, metric) => self.class_scopes.get(&(scope, metric)),
            RowKey::EdgeScope(scope) => self.edge_scopes.get(&scope),
            RowKey::Window(metric, edge) => self.windows.get(&(metric, edge)),
            RowKey::WindowClass(class, edge) => self.window_classes.get(&(class, edge)),
        }
    }

    fn distribution_mut(&mut self, key: &RowKey) -> Option<&mut Distribution> {
        match *key {
            RowKey::Fanout(edge) => self.fanout.get_mut(&edge),
            RowKey::RequestEdge(class, edge) => self.request_edges.get_mut(&(class, edge)),
            RowKey::RequestWork(class, edge) => self.request_work.get_mut(&(class, edge)),
            RowKey::RequestBytes(class, edge) => self.request_bytes.get_mut(&(class, edge)),
            RowKey::RequestTotal(class, metric) => self.request_totals.get_mut(&(class, metric)),
            RowKey::ClassScope(scope, metric) => self.class_scopes.get_mut(&(scope, metric)),
            RowKey::EdgeScope(scope) => self.edge_scopes.get_mut(&scope),
            RowKey::Window(metric, edge) => self.windows.get_mut(&(metric, edge)),
            RowKey::WindowClass(class, edge) => self.window_classes.get_mut(&(class, edge)),
        }
    }

    /// Every row's key, table by table.
    pub fn row_keys(&self) -> impl Iterator<Item = RowKey> + '_ {
        let fanout = self.fanout.keys().map(|&edge| RowKey::Fanout(edge));
        let request_edges = self.request_edges.keys().map(|&key| RowKey::request_edge(key));
        let request_work = self.request_work.keys().map(|&key| RowKey::request_work(key));
        let request_bytes = self.request_bytes.keys().map(|&key| RowKey::request_bytes(key));
        let request_totals = self.request_totals.keys().map(|&key| RowKey::request_total(key));
        let class_scopes = self.class_scopes.keys().map(|&key| RowKey::class_scope(key));
        let edge_scopes = self.edge_scopes.keys().map(|&scope| RowKey::EdgeScope(scope));
        let windows = self.windows.keys().map(|&key| RowKey::window(key));
        let window_classes = self.window_classes.keys().map(|&key| RowKey::window_class(key));
        fanout
            .chain(request_edges)
            .chain(request_work)
            .chain(request_bytes)
            .chain(request_totals)
            .chain(class_scopes)
            .chain(edge_scopes)
            .chain(windows)
            .chain(window_classes)
    }

    fn for_each_distribution_mut(&mut self, mut f: impl FnMut(&mut Distribution)) {
        self.fanout.values_mut().for_each(&mut f);
        self.request_edges.values_mut().for_each(&mut f);
        self.request_work.values_mut().for_each(&mut f);
        self.request_bytes.values_mut().for_each(&mut f);
        self.request_totals.values_mut().for_each(&mut f);
        self.class_scopes.values_mut().for_each(&mut f);
        self.edge_scopes.values_mut().for_each(&mut f);
        self.windows.values_mut().for_each(&mut f);
        self.window_classes.values_mut().for_each(&mut f);
    }
}

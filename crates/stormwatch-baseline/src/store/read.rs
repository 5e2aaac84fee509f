//! Reading the store: every table, the correlated model, the watermark and the tuning's
//! freezes, behind methods (the tables change only through `observe_*`, which keep the key
//! cap, and the setters here).

use std::collections::HashSet;

use stormwatch_model::{Edge, NodeName, RootClass};

use super::{BaselineStore, ClassScope, DailyProfile, EdgeScope, RequestMetric, Table, WindowMetric};
use crate::{Pace, PaceLane, SubspaceModel};

impl BaselineStore {
    /// Calls per parent span, per edge.
    pub fn fanout(&self) -> &Table<Edge> {
        &self.fanout
    }

    /// Calls per root request, per (root class, edge).
    pub fn request_edges(&self) -> &Table<(RootClass, Edge)> {
        &self.request_edges
    }

    /// Work per root request on an edge (microseconds of call time), per (root class, edge).
    pub fn request_work(&self) -> &Table<(RootClass, Edge)> {
        &self.request_work
    }

    /// Payload bytes per root request on an edge (and into the entry point), per (root class,
    /// edge).
    pub fn request_bytes(&self) -> &Table<(RootClass, Edge)> {
        &self.request_bytes
    }

    /// How long a call to `callee` usually takes, microseconds (`None` while not known well
    /// enough): see [`Pace`].
    pub fn usual_call_micros(&self, callee: PaceLane) -> Option<f64> {
        self.pace.get(&callee).and_then(Pace::usual_micros)
    }

    /// How many times slower than usual `callee` answers lately (1 when not slower, or not
    /// known well enough): see [`Pace`].
    pub fn slowdown(&self, callee: PaceLane) -> f64 {
        self.pace.get(&callee).map_or(1.0, Pace::slowdown)
    }

    /// Spans, DB calls and services per root request, per root class.
    pub fn request_totals(&self) -> &Table<(RootClass, RequestMetric)> {
        &self.request_totals
    }

    /// Request totals per entry route, entry service and for the whole system.
    pub fn class_scopes(&self) -> &Table<(ClassScope, RequestMetric)> {
        &self.class_scopes
    }

    /// Calls per parent span from a service to another, and to any callee of a kind.
    pub fn edge_scopes(&self) -> &Table<EdgeScope> {
        &self.edge_scopes
    }

    /// Window level, per edge: work per entry request, retry ratio, cache miss ratio.
    pub fn windows(&self) -> &Table<(WindowMetric, Edge)> {
        &self.windows
    }

    /// Window level: calls on an edge caused by one root class, per thousand entry requests.
    pub fn window_classes(&self) -> &Table<(RootClass, Edge)> {
        &self.window_classes
    }

    /// Window level, per metric and edge: the usual level at each hour of the day.
    pub fn seasonal(&self) -> &Table<(WindowMetric, Edge), DailyProfile> {
        &self.seasonal
    }

    /// The correlated-storm detector's normal subspace, once fitted.
    pub fn correlated(&self) -> Option<&SubspaceModel> {
        self.correlated.as_ref()
    }

    /// The correlated model, taken out to be updated (put it back with
    /// [`BaselineStore::set_correlated`]).
    pub fn take_correlated(&mut self) -> Option<SubspaceModel> {
        self.correlated.take()
    }

    /// Puts the correlated model (back) in place.
    pub fn set_correlated(&mut self, model: Option<SubspaceModel>) {
        self.correlated = model;
    }

    /// Event time the store has learned up to.
    pub fn watermark(&self) -> u64 {
        self.watermark_unix_nano
    }

    /// Moves the learned-up-to event time forward to `at` (never back).
    pub fn advance_watermark(&mut self, at: u64) {
        self.watermark_unix_nano = self.watermark_unix_nano.max(at);
    }

    /// What the tuning freezes: every baseline, and edges by caller and callee name (any
    /// callee kind).
    pub fn freezing(&self) -> (bool, &HashSet<(NodeName, NodeName)>) {
        (self.freeze_all, &self.frozen_edges)
    }

    /// Sets what the tuning freezes (see [`BaselineStore::freezing`]).
    pub fn set_freezing(&mut self, all: bool, edges: HashSet<(NodeName, NodeName)>) {
        self.freeze_all = all;
        self.frozen_edges = edges;
    }
}

//! The snapshot document's JSON types: one struct per table's entries, the whole document,
//! and its header. Field names are the `models/` format (see `models/README.md`).

use serde::{Deserialize, Serialize};

use crate::{DailyProfile, Distribution};

#[derive(Serialize, Deserialize)]
pub(super) struct NodeDoc {
    pub(super) service: String,
    pub(super) operation: String,
    pub(super) kind: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct EdgeDoc {
    pub(super) from: NodeDoc,
    pub(super) to: NodeDoc,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ClassDoc {
    pub(super) service: String,
    pub(super) operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) query_shape: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct FanoutDoc {
    pub(super) edge: EdgeDoc,
    pub(super) calls_per_parent: Distribution,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RequestWorkDoc {
    pub(super) entry: ClassDoc,
    pub(super) edge: EdgeDoc,
    pub(super) work_micros_per_request: Distribution,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RequestBytesDoc {
    pub(super) entry: ClassDoc,
    pub(super) edge: EdgeDoc,
    pub(super) bytes_per_request: Distribution,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RequestEdgeDoc {
    pub(super) entry: ClassDoc,
    pub(super) edge: EdgeDoc,
    pub(super) calls_per_request: Distribution,
}

#[derive(Serialize, Deserialize)]
pub(super) struct RequestTotalDoc {
    pub(super) entry: ClassDoc,
    pub(super) metric: String,
    pub(super) per_request: Distribution,
}

/// A request total above root classes: `level` is `route` (service and operation), `service`
/// (service) or `system` (neither).
#[derive(Serialize, Deserialize)]
pub(super) struct ClassScopeDoc {
    pub(super) level: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) operation: Option<String>,
    pub(super) metric: String,
    pub(super) per_request: Distribution,
}

/// A scope above edges: `pair` (every call from `from` to the service `to`) or `kind` (every
/// call from `from` to any callee of `kind`).
#[derive(Serialize, Deserialize)]
pub(super) struct EdgeScopeDoc {
    pub(super) level: String,
    pub(super) from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) to: Option<String>,
    pub(super) kind: String,
    pub(super) calls_per_parent: Distribution,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WindowDoc {
    pub(super) metric: String,
    pub(super) edge: EdgeDoc,
    pub(super) thousandths: Distribution,
}

#[derive(Serialize, Deserialize)]
pub(super) struct WindowClassDoc {
    pub(super) entry: ClassDoc,
    pub(super) edge: EdgeDoc,
    pub(super) per_thousand_entries: Distribution,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SeasonalDoc {
    pub(super) metric: String,
    pub(super) edge: EdgeDoc,
    pub(super) hours: DailyProfile,
}

#[derive(Serialize, Deserialize)]
pub(super) struct CorrelatedDoc {
    pub(super) edges: Vec<EdgeDoc>,
    pub(super) mean: Vec<f64>,
    pub(super) scale: Vec<f64>,
    pub(super) components: Vec<Vec<f64>>,
    pub(super) kept: usize,
    pub(super) threshold: f64,
    pub(super) typical: f64,
    pub(super) samples: usize,
    pub(super) fitted_unix_nano: u64,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotDoc {
    pub(super) format: String,
    pub(super) version: u32,
    pub(super) watermark_unix_nano: u64,
    pub(super) fanout: Vec<FanoutDoc>,
    pub(super) request_edges: Vec<RequestEdgeDoc>,
    pub(super) request_totals: Vec<RequestTotalDoc>,
    /// Added after version 1 first shipped; absent in older files, which still load (and
    /// learn these again as traffic comes).
    #[serde(default)]
    pub(super) class_scopes: Vec<ClassScopeDoc>,
    #[serde(default)]
    pub(super) edge_scopes: Vec<EdgeScopeDoc>,
    #[serde(default)]
    pub(super) windows: Vec<WindowDoc>,
    #[serde(default)]
    pub(super) window_classes: Vec<WindowClassDoc>,
    #[serde(default)]
    pub(super) seasonal: Vec<SeasonalDoc>,
    #[serde(default)]
    pub(super) request_work: Vec<RequestWorkDoc>,
    #[serde(default)]
    pub(super) request_bytes: Vec<RequestBytesDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) correlated: Option<CorrelatedDoc>,
}

/// Only the header, read first so a version mismatch is reported as such.
#[derive(Deserialize)]
pub(super) struct Header {
    pub(super) format: String,
    pub(super) version: u32,
}

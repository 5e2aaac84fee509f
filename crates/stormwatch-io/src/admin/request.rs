//! What the admin API asks, parsed and checked once: one variant per route.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

/// A question for the engine thread: what is asked, who asked, and where to send the answer
/// (HTTP status, JSON body).
#[derive(Debug)]
pub struct AdminQuery {
    /// The route and its parameters, parsed once (here, in the API).
    pub request: AdminRequest,
    /// Who asked (`X-Stormwatch-User`, else "api"), for the audit trail.
    pub who: String,
    /// Where the answer goes: HTTP status and JSON body.
    pub reply: oneshot::Sender<(u16, String)>,
}

/// What the admin API asks, one variant per route: of what the engine publishes
/// ([`super::AdminReads`]), or of the engine thread. Parameters the API can check on its own are
/// checked before the question is put (a 400 never reaches the engine); `/api/baselines`'
/// parameters are the query language of `stormwatch_baseline::inspect`, which the reader (and
/// `stormwatch baseline list` offline) checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// `GET /api/baselines`: the rows these parameters select.
    Baselines(BTreeMap<String, String>),
    /// `GET /api/graph`: the last judged window's service graph, at most `limit` edges, only
    /// those of nodes whose name contains `focus` when given.
    Graph {
        /// Most edges (1 to [`MAX_GRAPH_EDGES`]; [`DEFAULT_GRAPH_EDGES`] when not given).
        limit: usize,
        /// Text a node's name must contain.
        focus: Option<String>,
    },
    /// `GET /api/alerts`: the newest recent alerts first.
    Alerts {
        /// Most alerts (100 when not given or not a number).
        limit: usize,
        /// Only this kind (`n_plus_one`, ...).
        kind: Option<String>,
        /// Only alerts whose edge or entry contains this text.
        matching: Option<String>,
    },
    /// `GET /api/explain?id=`: why a recent alert (by id or fingerprint) fired.
    Explain {
        /// An alert id or fingerprint.
        id: String,
    },
    /// `GET /api/snapshot`: the baselines as a snapshot document.
    Snapshot,
    /// `POST /api/snapshot`: replace the baselines (authenticated; the body within its limit).
    Import {
        /// The snapshot document.
        document: String,
    },
    /// `GET /api/tuning`: the tuning file and what it does.
    Tuning,
    /// `POST /api/tuning`: one tuning change, JSON (authenticated).
    ChangeTuning {
        /// The change, as sent.
        change: String,
    },
}

/// Edges `/api/graph` shows when `limit` is not given.
pub const DEFAULT_GRAPH_EDGES: usize = 200;
/// Most edges one `/api/graph` answer may ask for.
pub const MAX_GRAPH_EDGES: usize = 10_000;
/// Alerts `/api/alerts` shows when `limit` is not given.
pub const DEFAULT_ALERTS: usize = 100;

/// A question the API refuses before asking the engine (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminRequestError {
    /// A parameter the route does not take.
    #[error("unknown parameter {name:?}: {route} takes {takes}")]
    UnknownParameter {
        /// The parameter sent.
        name: String,
        /// The route asked.
        route: &'static str,
        /// The parameters it takes, in words.
        takes: &'static str,
    },
    /// `limit` out of its range.
    #[error("limit must be a number from 1 to {most}")]
    Limit {
        /// The largest `limit` taken.
        most: usize,
    },
    /// `/api/explain` without `id`.
    #[error("explain needs ?id=ALERT_ID_OR_FINGERPRINT")]
    MissingId,
}

impl AdminRequest {
    /// `GET /api/graph?limit=N&focus=TEXT`, or why it is refused.
    pub fn graph(params: &BTreeMap<String, String>) -> Result<AdminRequest, AdminRequestError> {
        if let Some(unknown) = params.keys().find(|k| !["limit", "focus"].contains(&k.as_str())) {
            let (route, takes) = ("/api/graph", "limit and focus");
            return Err(AdminRequestError::UnknownParameter { name: unknown.clone(), route, takes });
        }
        let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
            None => DEFAULT_GRAPH_EDGES,
            Some(Ok(limit)) if (1..=MAX_GRAPH_EDGES).contains(&limit) => limit,
            Some(_) => return Err(AdminRequestError::Limit { most: MAX_GRAPH_EDGES }),
        };
        Ok(AdminRequest::Graph { limit, focus: params.get("focus").cloned() })
    }

    /// `GET /api/alerts?limit=N&kind=KIND&match=TEXT`.
    pub fn alerts(params: &BTreeMap<String, String>) -> AdminRequest {
        AdminRequest::Alerts {
            limit: params.get("limit").and_then(|l| l.parse().ok()).unwrap_or(DEFAULT_ALERTS),
            kind: params.get("kind").cloned(),
            matching: params.get("match").cloned(),
        }
    }

    /// `GET /api/explain?id=ID`, or why it is refused.
    pub fn explain(params: &BTreeMap<String, String>) -> Result<AdminRequest, AdminRequestError> {
        match params.get("id") {
            Some(id) => Ok(AdminRequest::Explain { id: id.clone() }),
            None => Err(AdminRequestError::MissingId),
        }
    }
}

//! The admin HTTP API: `/healthz` for liveness probes, `/metrics` for Prometheus, and
//! `/api/...` for what the engine learned. The engine thread owns the baselines (no locks), so
//! API reads are questions put to it through [`AdminQuery`]: it answers between two batches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

/// A question for the engine thread: the API path, its query parameters, and where to send
/// the answer (HTTP status, JSON body).
#[derive(Debug)]
pub struct AdminQuery {
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub reply: oneshot::Sender<(u16, String)>,
}

/// The admin API's side of the engine thread's question channel.
pub type AdminQueries = std::sync::mpsc::Sender<AdminQuery>;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    queries: Option<AdminQueries>,
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

fn json(status: u16, body: String) -> axum::response::Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(status: u16, message: &str) -> axum::response::Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// Asks the engine thread and waits (the engine answers within its next 100 ms tick unless a
/// large batch is being processed).
async fn ask(state: &AdminState, path: &str, params: BTreeMap<String, String>) -> axum::response::Response {
    let Some(queries) = &state.queries else {
        return error(503, "no engine answers API queries in this process");
    };
    let (reply, answer) = oneshot::channel();
    if queries.send(AdminQuery { path: path.to_string(), params, reply }).is_err() {
        return error(503, "the engine is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(30), answer).await {
        Ok(Ok((status, body))) => json(status, body),
        Ok(Err(_)) => error(503, "the engine is shutting down"),
        Err(_) => error(503, "the engine did not answer within 30 s; it may be overloaded, retry later"),
    }
}

async fn baselines(
    State(state): State<AdminState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    ask(&state, "/api/baselines", params).await
}

pub fn admin_router(metrics: Arc<Metrics>, queries: Option<AdminQueries>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(self::metrics))
        .route("/api/baselines", get(baselines))
        .with_state(AdminState { metrics, queries })
}

pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    queries: Option<AdminQueries>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, admin_router(metrics, queries)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

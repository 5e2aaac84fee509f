//! The admin HTTP API: `/healthz` for liveness probes and `/metrics` for Prometheus.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Metrics;

async fn metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
}

pub fn admin_router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/metrics", get(self::metrics)).with_state(metrics)
}

pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, admin_router(metrics)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

//! The admin HTTP API: `/healthz` for liveness probes, `/metrics` for Prometheus, and
//! `/api/...` for what the engine learned and the tuning. The engine thread owns the baselines
//! and the tuning (no locks). Reads are answered off it, from what it publishes
//! ([`AdminReads`], on the blocking pool, at most [`MAX_CONCURRENT_READS`] at a time); writes
//! (and what no published view holds) are questions put to it through [`AdminQuery`], answered
//! between two batches, so their order is kept. Writes need `Authorization: Bearer <token>`; API reads are open
//! when the admin API listens on loopback, and need the token too otherwise (`/healthz` and
//! `/metrics` stay open for probes and scrapers).
//!
//! The engine also tells what happens as it happens: every alert and every judged window is a
//! server-sent event on `GET /api/events`, which the web console at `/` listens to.
//!
//! Every route answers only the hosts it serves and pages of its own origin
//! ([`crate::server::host`]); write bodies are read after the token is checked, within their
//! size limit and the body timeouts ([`crate::server::body`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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

use crate::server::body::{BodyError, Intake};
use crate::server::host::AllowedHosts;
use crate::server::{ConnectionLimits, Listener};
use crate::Metrics;

mod request;

pub use request::{AdminQuery, AdminRequest, AdminRequestError, DEFAULT_ALERTS, DEFAULT_GRAPH_EDGES, MAX_GRAPH_EDGES};

/// The admin API's side of the engine thread's question channel.
pub type AdminQueries = std::sync::mpsc::Sender<AdminQuery>;

/// Something that happened in the engine, for the open `/api/events` streams: `alert` (the
/// alert's JSON) or `window` (a window was judged: `{"window_end": ...}`).
#[derive(Clone, Debug)]
pub struct LiveEvent {
    /// `alert` or `window`.
    pub name: &'static str,
    /// The event's JSON.
    pub data: String,
}

/// The engine's side of the live events: a send reaches every open stream, and costs nothing
/// when none is open. A stream that falls more than [`LIVE_BACKLOG`] events behind is told
/// `lagged` and resynchronises from the API.
pub type LiveEvents = tokio::sync::broadcast::Sender<LiveEvent>;

/// Events an `/api/events` stream may fall behind by.
pub const LIVE_BACKLOG: usize = 1024;

/// A new live event channel.
pub fn live_events() -> LiveEvents {
    tokio::sync::broadcast::channel(LIVE_BACKLOG).0
}

/// What the admin API serves.
pub struct AdminApi {
    /// The engine's counters and gauges, served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The engine thread's question channel; `None`: API questions get 503s.
    pub queries: Option<AdminQueries>,
    /// What the engine publishes for reads; `None`: reads are questions to the engine thread.
    pub reads: Option<Arc<dyn AdminReads>>,
    /// Writes need it; `None`: writes are refused.
    pub token: Option<String>,
    /// The console's link to a trace in the user's tracing UI, `{trace_id}` replaced.
    pub trace_url_template: String,
    /// The engine's live events; `None`: `/api/events` answers 503.
    pub live: Option<LiveEvents>,
    /// The host names it answers besides addresses and `localhost` (`server.allowed_hosts`).
    pub hosts: AllowedHosts,
    /// Largest snapshot `POST /api/snapshot` takes (`server.max_import_bytes`).
    pub max_import_bytes: usize,
    /// Most `/api/events` streams open at once (`server.max_event_streams`).
    pub max_event_streams: usize,
    /// The time a request body may take (`server.body_timeout`).
    pub body_timeout: Duration,
    /// The pace a request body must keep, bytes per second (`server.min_body_rate`).
    pub min_body_rate: u64,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi").finish_non_exhaustive()
    }
}

/// Answers admin API reads from what the engine publishes, without the engine thread.
pub trait AdminReads: Send + Sync {
    /// The status and JSON body answering `request`, or `None` when only the engine thread can
    /// answer it (a write, an export of the whole store).
    fn answer(&self, request: &AdminRequest) -> Option<(u16, String)>;
}

/// Reads answered at once off the engine thread; more wait their turn.
pub const MAX_CONCURRENT_READS: usize = 4;

/// Largest tuning change `POST /api/tuning` takes.
pub const MAX_TUNING_CHANGE_BYTES: usize = 64 * 1024;

/// Longest `X-Stormwatch-User`.
pub const MAX_USER_BYTES: usize = 64;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    queries: Option<AdminQueries>,
    reads: Option<Arc<dyn AdminReads>>,
    /// Reads under way off the engine thread.
    reading: Arc<tokio::sync::Semaphore>,
    /// Writes need it; `None`: writes are refused.
    token: Option<Arc<str>>,
    /// API reads without the token (the admin API listens on loopback).
    open_reads: bool,
    /// The console's link to a trace in the user's tracing UI, `{trace_id}` replaced.
    trace_url_template: Arc<str>,
    live: Option<LiveEvents>,
    /// Ends the live event streams, so a graceful shutdown does not wait on them.
    shutdown: CancellationToken,
    hosts: AllowedHosts,
    /// Write bodies, read after the token is checked: one import's worth at a time.
    intake: Arc<Intake>,
    max_import_bytes: usize,
    /// Open `/api/events` streams, and how many may be.
    event_streams: Arc<AtomicUsize>,
    max_event_streams: usize,
}

/// The web console: one page, no external assets, embedded in the binary.
const CONSOLE: &str = include_str!("console.html");

async fn console() -> axum::response::Html<&'static str> {
    axum::response::Html(CONSOLE)
}

/// What the console needs to know of the settings.
async fn console_settings(State(state): State<AdminState>) -> axum::response::Response {
    let metrics = &state.metrics;
    let body = serde_json::json!({
        "trace_url_template": &*state.trace_url_template,
        // Probability sampling: traces judged, those that carried a threshold, and the traffic
        // they stand for (see `stormwatch_traces_represented_total`).
        "sampling": {
            "traces": Metrics::get(&metrics.traces_completed_total),
            "sampled": Metrics::get(&metrics.traces_sampled_total),
            "represented": Metrics::get(&metrics.traces_represented_total),
        },
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// How long the alert sink has been failing, if it is.
fn sink_failing_for(metrics: &Metrics) -> Option<u64> {
    let since = Metrics::get(&metrics.alert_sink_failing_since_seconds);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (since > 0).then(|| now.saturating_sub(since))
}

/// Liveness: 200 while the process serves; says when alert delivery is failing (a restart
/// would not help: alerts are held and retried).
async fn healthz(State(state): State<AdminState>) -> String {
    match sink_failing_for(&state.metrics) {
        None => "ok\n".into(),
        Some(seconds) => {
            format!("degraded: alert delivery has been failing for {seconds} s; alerts are held and retried\n")
        }
    }
}

/// Readiness: 503 while alert delivery is failing.
async fn readyz(State(state): State<AdminState>) -> axum::response::Response {
    match sink_failing_for(&state.metrics) {
        None => "ok\n".into_response(),
        Some(seconds) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: alert delivery has been failing for {seconds} s\n"))
                .into_response()
        }
    }
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

/// Answers from what the engine published when that holds the answer (on the blocking pool,
/// [`MAX_CONCURRENT_READS`] at a time); else asks the engine thread and waits (it answers
/// within its next 100 ms tick unless a large batch is being processed).
async fn ask(state: &AdminState, request: AdminRequest, who: String) -> axum::response::Response {
    if let Some(reads) = &state.reads {
        let Ok(_turn) = state.reading.acquire().await else {
            return error(503, "the engine is shutting down");
        };
        let (reads, asked) = (reads.clone(), request.clone());
        match tokio::task::spawn_blocking(move || reads.answer(&asked)).await {
            Ok(Some((status, body))) => return json(status, body),
            Ok(None) => {}
            Err(_) => return error(500, "the read failed; see the engine's log"),
        }
    }
    let Some(queries) = &state.queries else {
        return error(503, "no engine answers API queries in this process");
    };
    let (reply, answer) = oneshot::channel();
    if queries.send(AdminQuery { request, who, reply }).is_err() {
        return error(503, "the engine is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(30), answer).await {
        Ok(Ok((status, body))) => json(status, body),
        Ok(Err(_)) => error(503, "the engine is shutting down"),
        Err(_) => error(503, "the engine did not answer within 30 s; it may be overloaded, retry later"),
    }
}

/// One open `/api/events` stream, counted while it lives.
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<AtomicUsize>, most: usize) -> Option<StreamSlot> {
        open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < most).then_some(n + 1)).ok()?;
        Some(StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /api/events`: server-sent events, `ready` first, then each `alert` and `window` as the
/// engine sends them (`lagged` when this stream fell behind: re-read the API), with a comment
/// every 15 s to keep proxies from closing the stream. Ends when the engine shuts down.
async fn events(State(state): State<AdminState>) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    let Some(live) = &state.live else {
        return error(503, "no engine sends live events in this process");
    };
    let Some(open) = StreamSlot::take(&state.event_streams, state.max_event_streams) else {
        let message = format!(
            "{} event streams are open already (server.max_event_streams): close one, or poll /api/alerts",
            state.max_event_streams
        );
        return error(503, &message);
    };
    let ready = futures::stream::once(async { Event::default().event("ready").data("{}") });
    let happenings =
        futures::stream::unfold((live.subscribe(), state.shutdown.clone(), open), |(mut events, stop, open)| async {
            let event = tokio::select! {
                _ = stop.cancelled() => return None,
                received = events.recv() => match received {
                    Ok(happened) => Event::default().event(happened.name).data(happened.data),
                    Err(RecvError::Lagged(missed)) => Event::default().event("lagged").data(missed.to_string()),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((event, (events, stop, open)))
        });
    let stream = ready.chain(happenings).map(Ok::<_, std::convert::Infallible>);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

async fn baselines(
    State(state): State<AdminState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    ask(&state, AdminRequest::Baselines(params), String::new()).await
}

async fn alerts(
    State(state): State<AdminState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    ask(&state, AdminRequest::alerts(&params), String::new()).await
}

async fn graph(
    State(state): State<AdminState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    match AdminRequest::graph(&params) {
        Ok(request) => ask(&state, request, String::new()).await,
        Err(refused) => error(400, &refused.to_string()),
    }
}

async fn explain(
    State(state): State<AdminState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    match AdminRequest::explain(&params) {
        Ok(request) => ask(&state, request, String::new()).await,
        Err(refused) => error(400, &refused.to_string()),
    }
}

async fn snapshot(State(state): State<AdminState>) -> axum::response::Response {
    ask(&state, AdminRequest::Snapshot, String::new()).await
}

async fn tuning(State(state): State<AdminState>) -> axum::response::Response {
    ask(&state, AdminRequest::Tuning, String::new()).await
}

/// Compares without stopping at the first difference, so the time taken says nothing about
/// how much of a guess was right.
/// Equal bytes, compared in constant time (for secrets).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn change_tuning(State(state): State<AdminState>, request: axum::extract::Request) -> axum::response::Response {
    let change = |change| AdminRequest::ChangeTuning { change };
    write(state, request, change, MAX_TUNING_CHANGE_BYTES, "tuning changes are at most 64 KiB").await
}

async fn import_snapshot(State(state): State<AdminState>, request: axum::extract::Request) -> axum::response::Response {
    let limit = state.max_import_bytes;
    let import = |document| AdminRequest::Import { document };
    write(state, request, import, limit, "server.max_import_bytes").await
}

/// The 401 (or 403) when the request does not carry the admin token.
fn refusal(state: &AdminState, headers: &http::HeaderMap, what: &str) -> Option<axum::response::Response> {
    let Some(token) = &state.token else {
        return Some(error(403, "disabled: no admin token is configured (server.admin_token)"));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(presented.as_bytes(), token.as_bytes()) {
        return None;
    }
    let message =
        format!("{what} needs Authorization: Bearer <admin token> (models/admin.token, or server.admin_token)");
    let mut response = error(401, &message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    Some(response)
}

/// API reads off loopback need the token.
async fn guard_reads(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.method() == http::Method::GET && !state.open_reads {
        if let Some(refused) = refusal(&state, request.headers(), "reading the API off loopback") {
            return refused;
        }
    }
    next.run(request).await
}

/// Whether `c` may be part of an `X-Stormwatch-User` name: ASCII letters, digits, `.-_@+` and
/// spaces.
pub fn user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ".-_@+ ".contains(c)
}

/// Who made a write, for the audit trail: `X-Stormwatch-User` (a name of up to
/// [`MAX_USER_BYTES`] [`user_char`]s), else "api".
fn who_of(headers: &http::HeaderMap) -> Result<String, String> {
    let Some(value) = headers.get("x-stormwatch-user") else { return Ok("api".into()) };
    let text = value.to_str().unwrap_or("").trim();
    if text.is_empty() || text.len() > MAX_USER_BYTES || !text.chars().all(user_char) {
        return Err(format!(
            "X-Stormwatch-User must be a name of 1 to {MAX_USER_BYTES} letters, digits, spaces and .-_@+ (it goes \
             into the tuning file's audit trail)"
        ));
    }
    Ok(text.to_string())
}

/// An authenticated write, put to the engine thread: the token is checked before the body is
/// read, and the body is read within `limit` bytes (named by `setting`) and the body timeouts.
async fn write(
    state: AdminState,
    request: axum::extract::Request,
    asked: impl FnOnce(String) -> AdminRequest,
    limit: usize,
    setting: &'static str,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    if let Some(refused) = refusal(&state, &parts.headers, "a write") {
        return refused;
    }
    let who = match who_of(&parts.headers) {
        Ok(who) => who,
        Err(message) => return error(400, &message),
    };
    let (body, _lease) = match state.intake.read(body, limit, setting).await {
        Ok(read) => read,
        Err(refused) => {
            let status = match refused {
                BodyError::TooLarge { .. } => 413,
                BodyError::Busy { .. } => 503,
                BodyError::TooSlow { .. } => 408,
                BodyError::Broken(_) => 400,
            };
            return error(status, &refused.to_string());
        }
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return error(400, "the request body is not UTF-8 text");
    };
    ask(&state, asked(body), who).await
}

/// Every route answers only the hosts it serves, and pages of its own origin.
async fn check_host(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match state.hosts.refusal(request.headers()) {
        None => next.run(request).await,
        Some(refusal) => {
            Metrics::add(&state.metrics.requests_misdirected_total, 1);
            error(403, &refusal)
        }
    }
}

/// `open_reads`: API reads without the token (listening on loopback). `shutdown` ends the
/// live event streams.
pub fn admin_router(api: AdminApi, open_reads: bool, shutdown: CancellationToken) -> Router {
    // One import's worth of body at a time (writes are authenticated before they are read).
    let intake = Intake::new(api.max_import_bytes as u64, api.body_timeout, api.min_body_rate, api.metrics.clone());
    let state = AdminState {
        metrics: api.metrics,
        queries: api.queries,
        reads: api.reads,
        reading: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_READS)),
        token: api.token.map(Arc::from),
        open_reads,
        trace_url_template: api.trace_url_template.into(),
        live: api.live,
        shutdown,
        hosts: api.hosts,
        intake,
        max_import_bytes: api.max_import_bytes,
        event_streams: Arc::new(AtomicUsize::new(0)),
        max_event_streams: api.max_event_streams,
    };
    let api = Router::new()
        .route("/api/console", get(console_settings))
        .route("/api/events", get(events))
        .route("/api/baselines", get(baselines))
        .route("/api/alerts", get(alerts))
        .route("/api/graph", get(graph))
        .route("/api/explain", get(explain))
        .route("/api/tuning", get(tuning).post(change_tuning))
        .route("/api/snapshot", get(snapshot).post(import_snapshot))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), guard_reads));
    Router::new()
        .route("/", get(console))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

/// Serves the admin API on `listener`; with `tls` (offering `http/1.1`), over TLS.
pub async fn serve_admin(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    api: AdminApi,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let open_reads = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let metrics = api.metrics.clone();
    let router = admin_router(api, open_reads, shutdown.clone());
    crate::server::serve(listener, tls, Listener::Admin, router, limits, metrics, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests;

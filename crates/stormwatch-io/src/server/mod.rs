//! Serving connections, for every listener of the engine (OTLP/gRPC, OTLP/HTTP, the admin API),
//! under bounds a sender on the network cannot push past. Each is a setting of `[server]`:
//!
//! * **Connections.** A listener holds at most `max_connections`. At the limit, a new
//!   connection closes the one that has been idle the longest (no request in progress, nothing
//!   received or sent for a second or more), so a flood of idle or half-open connections makes
//!   room for real clients instead of locking them out; when every connection is busy, the new
//!   one is closed at once. The engine keeps descriptors in reserve beyond the listeners' limits
//!   for snapshots, the spool and Kafka (see the binary's start-up).
//! * **Time.** An HTTP/1.1 request's head must arrive within `header_timeout` of the
//!   connection or of the previous response (so it is also the keep-alive idle time); a
//!   connection on which nothing moves for `idle_timeout` (a silent socket, an idle HTTP/2
//!   connection) is closed, gracefully (HTTP/2 `GOAWAY`) when it can be; a TLS handshake must
//!   end within [`crate::tls::HANDSHAKE_TIMEOUT`]. Bodies have their own bounds ([`body`]).
//! * **HTTP/2.** At most `max_streams` concurrent streams per connection, and header lists of at
//!   most [`MAX_HEADER_LIST_BYTES`].
//!
//! Every refusal is counted by listener on `/metrics`. A graceful shutdown stops accepting, lets
//! requests in progress finish, and drops what is still open [`CLOSE_GRACE`] later.
//!
//! (The listeners' receive budget and the host checks are the routers' part: [`body`],
//! [`host`].)

pub mod body;
pub mod host;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Metrics;

/// How long connections asked to close at shutdown get to finish what they are doing.
pub const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long an idle connection asked to close gets to say goodbye (an HTTP/2 `GOAWAY`, so a
/// client about to send on it goes elsewhere); one that never finished its handshake is
/// dropped then.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Most bytes of HTTP/2 request headers.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// A connection idle this long may be closed to make room for a new one.
const EVICTABLE_AFTER_MS: u64 = 1_000;
/// Connections of one listener being closed to make room, at most (each still holds a
/// descriptor until it is gone, which takes milliseconds): a listener holds at most
/// `max_connections` plus this many descriptors.
pub const MOST_CLOSING: usize = 64;

/// The engine's listeners, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The OTLP/gRPC receiver.
    OtlpGrpc,
    /// The OTLP/HTTP receiver.
    OtlpHttp,
    /// The admin API, console and metrics.
    Admin,
}

impl Listener {
    /// Every listener.
    pub const ALL: [Listener; 3] = [Listener::OtlpGrpc, Listener::OtlpHttp, Listener::Admin];

    /// The listener's name in metrics and logs (`otlp_grpc`).
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::OtlpGrpc => "otlp_grpc",
            Listener::OtlpHttp => "otlp_http",
            Listener::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What every listener holds its connections to (`[server]` settings).
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once, per listener.
    pub max_connections: usize,
    /// HTTP/1.1: the time a request head may take, from the connection or the last response.
    pub header_timeout: Duration,
    /// A connection on which nothing moves this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2: concurrent streams per connection.
    pub max_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_streams: 64,
        }
    }
}

/// One open connection, as its listener's table sees it.
struct Conn {
    epoch: Instant,
    /// Milliseconds since `epoch` when a byte last moved either way.
    last_active_ms: AtomicU64,
    /// Requests being answered.
    requests: AtomicUsize,
    /// Asked to close to make room (it still holds a descriptor until its task ends).
    closing: AtomicBool,
    evict: CancellationToken,
}

impl Conn {
    fn touch(&self) {
        self.last_active_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    fn busy(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }
}

/// A listener's open connections.
struct Table {
    listener: Listener,
    max: usize,
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Table {
    /// Room for a new connection: its id and state, or `None` when every connection is busy.
    fn admit(&self) -> Option<(u64, Arc<Conn>)> {
        let listener = &self.metrics.listeners[self.listener.index()];
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let closing = conns.values().filter(|c| c.closing.load(Ordering::Relaxed)).count();
        if conns.len() - closing >= self.max {
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            let idlest = conns
                .values()
                .filter(|c| !c.closing.load(Ordering::Relaxed) && !c.busy())
                .filter(|c| now_ms.saturating_sub(c.last_active_ms.load(Ordering::Relaxed)) >= EVICTABLE_AFTER_MS)
                .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
            match idlest {
                Some(idlest) if closing < MOST_CLOSING => {
                    idlest.closing.store(true, Ordering::Relaxed);
                    idlest.evict.cancel();
                    Metrics::add(&listener.evicted, 1);
                }
                _ => {
                    Metrics::add(&listener.refused, 1);
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            epoch: self.epoch,
            last_active_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            requests: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            evict: CancellationToken::new(),
        });
        conns.insert(id, conn.clone());
        Metrics::set(&listener.connections, conns.len() as u64);
        Some((id, conn))
    }

    fn leave(&self, id: u64) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.remove(&id);
        Metrics::set(&self.metrics.listeners[self.listener.index()].connections, conns.len() as u64);
    }
}

/// Takes a connection out of its table when its task ends, however it ends.
struct Leave(Arc<Table>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// Counts a request in progress on its connection while alive.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: Arc<Conn>) -> Busy {
        conn.requests.fetch_add(1, Ordering::Relaxed);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A socket that notes when bytes move on it.
struct Tracked {
    socket: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.socket).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.socket).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.socket).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// A connection's byte stream: plain, or TLS over it.
enum Stream {
    Plain(Tracked),
    Tls(Box<tokio_rustls::server::TlsStream<Tracked>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A tower service that answers HTTP requests of a listener (an axum router, the gRPC trace
/// service).
pub trait HttpService<B>:
    tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `service` on `listener` (HTTP/2 only for gRPC, HTTP/1.1 otherwise; with `tls`, over
/// TLS) within `limits`, until `shutdown` is cancelled and the connections are done.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    which: Listener,
    service: S,
    limits: &ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) where
    S: HttpService<B>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match which {
        Listener::OtlpGrpc => builder.http2_only(),
        Listener::OtlpHttp | Listener::Admin => builder.http1_only(),
    };
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    // Export requests are often hundreds of kilobytes: HTTP/2's default 64 KiB windows would
    // cost several round trips per request.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20);
    let table = Arc::new(Table {
        listener: which,
        max: limits.max_connections.max(1),
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        metrics: metrics.clone(),
    });
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let tracker = TaskTracker::new();
    let accept_errors = crate::Throttled::new(Duration::from_secs(10));
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    if let Some(held_back) = accept_errors.allow() {
                        tracing::warn!(listener = which.as_str(), %error, held_back, "accepting a connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((id, conn)) = table.admit() else { continue };
        let _ = socket.set_nodelay(true);
        let leave = Leave(table.clone(), id);
        let connection = Connection {
            which,
            conn,
            builder: builder.clone(),
            idle_timeout: limits.idle_timeout,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        tracker.spawn(connection.run(socket, peer, acceptor.clone(), service.clone(), leave));
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// One connection's task.
struct Connection {
    which: Listener,
    conn: Arc<Conn>,
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run<S, B>(
        self,
        socket: TcpStream,
        peer: std::net::SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        service: S,
        _leave: Leave,
    ) where
        S: HttpService<B>,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tracked = Tracked { socket, conn: self.conn.clone() };
        let stream = match tls {
            None => Stream::Plain(tracked),
            Some(acceptor) => {
                let handshake = tokio::select! {
                    handshake = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(tracked)) => handshake,
                    _ = self.conn.evict.cancelled() => return,
                    _ = self.shutdown.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(error)) => {
                        Metrics::add(&self.metrics.tls_handshake_failures_total, 1);
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        Metrics::add(&self.metrics.tls_handshake_failures_total, 1);
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let inner = TowerToHyperService::new(service);
        let conn = self.conn.clone();
        let counted = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let busy = Busy::new(conn.clone());
            let answer = hyper::service::Service::call(&inner, request);
            async move {
                let answered = answer.await;
                drop(busy);
                answered
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(stream), counted);
        let mut connection = std::pin::pin!(connection);
        let listener = &self.metrics.listeners[self.which.index()];
        let mut idle_check = self.conn.last_active() + self.idle_timeout;
        let mut closing_until: Option<Instant> = None;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        let timed_out = error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
                        if timed_out {
                            Metrics::add(&listener.timed_out, 1);
                        }
                        tracing::debug!(listener = self.which.as_str(), %peer, %error, "connection ended");
                    }
                    return;
                }
                _ = self.conn.evict.cancelled() => return,
                _ = self.shutdown.cancelled(), if closing_until.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing_until = Some(Instant::now() + CLOSE_GRACE);
                }
                _ = tokio::time::sleep_until(idle_check), if closing_until.is_none() => {
                    let quiet_until = self.conn.last_active() + self.idle_timeout;
                    if self.conn.busy() || quiet_until > Instant::now() {
                        idle_check = quiet_until.max(Instant::now() + Duration::from_secs(1));
                    } else {
                        Metrics::add(&listener.timed_out, 1);
                        connection.as_mut().graceful_shutdown();
                        closing_until = Some(Instant::now() + IDLE_CLOSE_GRACE);
                    }
                }
                _ = tokio::time::sleep_until(closing_until.unwrap_or_else(Instant::now)), if closing_until.is_some() => return,
            }
        }
    }
}

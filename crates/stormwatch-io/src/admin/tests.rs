//! The admin API over real loopback sockets: tokens, hosts and origins, the audit trail's
//! names, live event streams.

use std::io::{Read, Write};

use super::*;

fn api(metrics: Arc<Metrics>, token: Option<&str>) -> AdminApi {
    AdminApi {
        metrics,
        queries: None,
        reads: None,
        token: token.map(String::from),
        trace_url_template: String::new(),
        live: Some(live_events()),
        hosts: AllowedHosts::default(),
        max_import_bytes: 1 << 20,
        max_event_streams: 2,
        body_timeout: Duration::from_secs(30),
        min_body_rate: 1024,
    }
}

/// Serves the router on a loopback socket and makes one request: the status line.
async fn status(router: Router, request: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let request = request.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "{request}\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.lines().next().unwrap_or("").to_string()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn api_reads_off_loopback_and_every_write_need_the_token() {
    let router = |open_reads| {
        admin_router(api(Arc::new(Metrics::default()), Some("s3cret")), open_reads, CancellationToken::new())
    };
    // Off loopback: probes and scrapes stay open, API reads need the token.
    assert!(status(router(false), "GET /metrics HTTP/1.1").await.contains("200"));
    assert!(status(router(false), "GET /healthz HTTP/1.1").await.contains("200"));
    assert!(status(router(false), "GET /api/baselines HTTP/1.1").await.contains("401"));
    let with = "GET /api/baselines HTTP/1.1\r\nAuthorization: Bearer s3cret";
    // Past the guard; no engine answers in this test.
    assert!(status(router(false), with).await.contains("503"));
    // On loopback reads are open, writes are not.
    assert!(status(router(true), "GET /api/baselines HTTP/1.1").await.contains("503"));
    assert!(status(router(true), "POST /api/tuning HTTP/1.1").await.contains("401"));
    let wrong = "POST /api/tuning HTTP/1.1\r\nAuthorization: Bearer s3cre7";
    assert!(status(router(true), wrong).await.contains("401"));
    // The alert sink's state.
    let metrics = Arc::new(Metrics::default());
    Metrics::set(&metrics.alert_sink_failing_since_seconds, 1);
    let failing = admin_router(api(metrics, None), true, CancellationToken::new());
    assert!(status(failing.clone(), "GET /readyz HTTP/1.1").await.contains("503"));
    assert!(status(failing, "GET /healthz HTTP/1.1").await.contains("200"));
    assert!(status(router(true), "GET /readyz HTTP/1.1").await.contains("200"));
    // Without a token, writes are disabled.
    let none = admin_router(api(Arc::new(Metrics::default()), None), true, CancellationToken::new());
    assert!(status(none, "POST /api/snapshot HTTP/1.1").await.contains("403"));
}

/// DNS rebinding: a page under another name gets nothing from any route, the open ones
/// included; a cross-origin page cannot write; the audit trail takes names, not text.
#[tokio::test]
async fn foreign_hosts_and_origins_are_refused_and_writers_are_named() {
    let router = || admin_router(api(Arc::new(Metrics::default()), Some("s3cret")), true, CancellationToken::new());
    for path in ["/", "/healthz", "/metrics", "/api/snapshot", "/api/tuning", "/api/events", "/api/graph"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: evil.example:9464");
        assert!(status(router(), &request).await.contains("403"), "{path}");
    }
    let cross = "POST /api/tuning HTTP/1.1\r\nOrigin: http://evil.example\r\nAuthorization: Bearer s3cret";
    assert!(status(router(), cross).await.contains("403"));
    let named =
        |who: &str| format!("POST /api/tuning HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nX-Stormwatch-User: {who}");
    assert!(status(router(), &named("eve\u{1b}[2J")).await.contains("400"));
    assert!(status(router(), &named(&"a".repeat(65))).await.contains("400"));
    // A good name gets past the checks; no engine answers in this test.
    assert!(status(router(), &named("alice@corp.example")).await.contains("503"));
}

/// At most `max_event_streams` (2 here) are open at once; a closed one frees its place.
#[tokio::test]
async fn event_streams_are_capped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = admin_router(api(Arc::new(Metrics::default()), None), true, CancellationToken::new());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let open = || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
        let mut head = vec![0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        (String::from_utf8_lossy(&head).to_string(), stream)
    };
    let (first, first_stream) = open().await;
    let (second, _second_stream) = open().await;
    let (third, _) = open().await;
    assert_eq!((first.as_str(), second.as_str(), third.as_str()), ("HTTP/1.1 200", "HTTP/1.1 200", "HTTP/1.1 503"));
    drop(first_stream);
    // The server notices the closed stream at its next write (a keep-alive or an event).
    let mut again = String::new();
    for _ in 0..100 {
        again = open().await.0;
        if again == "HTTP/1.1 200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(again, "HTTP/1.1 200");
}

#[tokio::test]
async fn live_events_reach_every_stream_and_end_at_shutdown() {
    let live = live_events();
    let stop = CancellationToken::new();
    let mut with_live = api(Arc::new(Metrics::default()), None);
    with_live.live = Some(live.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = admin_router(with_live, true, stop.clone());
    let shutdown = stop.clone().cancelled_owned();
    let server = tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown).await });
    let reader = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        // Until the server ends the stream (chunked: the last chunk, then EOF).
        stream.read_to_string(&mut response).unwrap();
        response
    });
    // Sent once the stream is open (it announces itself with `ready`).
    while live.receiver_count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    live.send(LiveEvent { name: "alert", data: "{\"kind\":\"n_plus_one\"}".into() }).unwrap();
    live.send(LiveEvent { name: "window", data: "{\"window_end\":1}".into() }).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let response = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the stream ended").unwrap();
    assert!(response.contains("content-type: text/event-stream"), "{response}");
    let ready = response.find("event: ready").expect("ready first");
    let alert = response.find("event: alert\ndata: {\"kind\":\"n_plus_one\"}").expect("the alert");
    let window = response.find("event: window\ndata: {\"window_end\":1}").expect("the window");
    assert!(ready < alert && alert < window, "{response}");
    server.await.unwrap().unwrap();
}

/// Each route's parameters are parsed once, here: what the API can check is refused with a 400
/// naming the parameter before the engine is asked.
#[test]
fn requests_are_parsed_and_checked_before_the_engine_is_asked() {
    let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    assert_eq!(AdminRequest::graph(&params(&[])), Ok(AdminRequest::Graph { limit: DEFAULT_GRAPH_EDGES, focus: None }));
    assert_eq!(
        AdminRequest::graph(&params(&[("limit", "5"), ("focus", "db")])),
        Ok(AdminRequest::Graph { limit: 5, focus: Some("db".into()) })
    );
    let refused = AdminRequest::graph(&params(&[("limit", "0")])).unwrap_err();
    assert_eq!(refused.to_string(), "limit must be a number from 1 to 10000");
    let refused = AdminRequest::graph(&params(&[("limt", "5")])).unwrap_err();
    assert_eq!(refused.to_string(), "unknown parameter \"limt\": /api/graph takes limit and focus");
    assert_eq!(AdminRequest::explain(&params(&[])), Err(AdminRequestError::MissingId));
    assert_eq!(
        AdminRequest::alerts(&params(&[("limit", "many"), ("kind", "n_plus_one")])),
        AdminRequest::Alerts { limit: DEFAULT_ALERTS, kind: Some("n_plus_one".into()), matching: None }
    );
}

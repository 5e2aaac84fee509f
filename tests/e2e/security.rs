//! Access: TLS on every listener, client certificates (mTLS) and a bearer token for OTLP
//! ingestion, and secrets kept out of logs and metrics.

use std::path::Path;
use std::time::Duration;

use crate::support::{https_request, make_certificates, wait_until, Serve, Services};

const INGEST_TOKEN: &str = "fleet-ingest-3f9a1c";
const ADMIN_TOKEN: &str = "admin-7d2e44";

/// The official OTLP gRPC exporter over TLS, presenting `client` (cert, key) and sending
/// `token` as a bearer token.
fn grpc_exporter(serve: &Serve, certs: &Path, client: &str, token: Option<&str>) -> opentelemetry_otlp::SpanExporter {
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read(&format!("{client}.pem")), read(&format!("{client}.key"))))
        .domain_name("localhost");
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(token) = token {
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("https://localhost:{}", serve.grpc.port()))
        .with_tls_config(tls)
        .with_metadata(metadata)
        .with_timeout(Duration::from_secs(5))
        .build()
        .expect("OTLP exporter")
}

/// With `[server.tls]` (client CA set) and `server.ingest_token`:
/// * the fleet's collector (client certificate from the CA, the token) exports over gRPC;
/// * without the token, or with a wrong one, it is refused (UNAUTHENTICATED / 401 naming the
///   header), and nothing it sent is kept;
/// * without a client certificate, or with one from another CA, or in plain text, the TLS
///   handshake fails and is counted;
/// * the admin API answers over TLS, and `/metrics`, the log and `--print-config` never show
///   either token.
#[tokio::test(flavor = "multi_thread")]
async fn tls_client_certificates_and_the_ingest_token_keep_strangers_out() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certificates(&certs);
    let path = |name: &str| certs.join(name).display().to_string();
    let sections = format!(
        "[assemble]\ntrace_idle = \"1s\"\ntrace_max_wait = \"20s\"\n\
         [server]\ningest_token = \"{INGEST_TOKEN}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
         [server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        path("server.pem"),
        path("server.key"),
        path("ca.pem")
    );
    let ca = certs.join("ca.pem");
    let healthz = |admin| {
        https_request(admin, &ca, None, "GET /healthz HTTP/1.1", b"").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    };
    let serve = Serve::start_checked(dir.path(), &sections, &[], &healthz);
    let metric = |line_start: &str| -> u64 {
        let metrics = https_request(serve.admin, &ca, None, "GET /metrics HTTP/1.1", b"").unwrap();
        metrics.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok()).unwrap_or(0)
    };

    // The fleet's collector: certificate and token.
    let fleet =
        Services::with_exporters(vec![("frontend", grpc_exporter(&serve, &certs, "client", Some(INGEST_TOKEN)))]);
    // A stranger with a valid certificate but the wrong token.
    let stranger = Services::with_exporters(vec![("frontend", grpc_exporter(&serve, &certs, "client", Some("guess")))]);
    tokio::task::block_in_place(|| {
        for i in 0..20 {
            fleet.unrouted_request(&format!("/page/{}", i % 4));
            stranger.unrouted_request("/poison");
        }
        fleet.flush();
        wait_until("the fleet's spans", Duration::from_secs(20), || metric("stormwatch_spans_received_total ") == 40);
        wait_until("the stranger refused", Duration::from_secs(20), || {
            metric("stormwatch_requests_unauthenticated_total ") >= 1
        });
    });
    assert_eq!(metric("stormwatch_spans_received_total "), 40, "only the fleet's 20 requests (2 spans each)");

    // OTLP/HTTP over TLS: with the certificate but no token, a 401 that says what to send.
    let client = Some((certs.join("client.pem"), certs.join("client.key")));
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let refused =
        https_request(serve.http, &ca, client, "POST /v1/traces HTTP/1.1\r\nContent-Type: application/json", b"{}")
            .unwrap();
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("authorization: Bearer <token>"), "{refused}");
    let with_token =
        format!("POST /v1/traces HTTP/1.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {INGEST_TOKEN}");
    let accepted = https_request(serve.http, &ca, client, &with_token, b"{}").unwrap();
    assert!(accepted.starts_with("HTTP/1.1 200"), "{accepted}");

    // No certificate, another CA's certificate, plain text: no handshake, counted.
    let failures = metric("stormwatch_tls_handshake_failures_total ");
    let rogue = (certs.join("rogue.pem"), certs.join("rogue.key"));
    let no_certificate = https_request(serve.http, &ca, None, &with_token, b"{}");
    // TLS 1.3 finishes the client's side first: the refusal arrives as the CertificateRequired
    // alert, or as a reset if the client is still writing when the server hangs up.
    assert!(no_certificate.is_err(), "{no_certificate:?}");
    let other_ca = https_request(serve.http, &ca, Some((&rogue.0, &rogue.1)), &with_token, b"{}");
    assert!(other_ca.is_err(), "{other_ca:?}");
    let plain = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(serve.http).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    };
    assert!(!plain.starts_with(b"HTTP/"), "plain HTTP to a TLS port was answered in plain HTTP");
    wait_until("the failed handshakes counted", Duration::from_secs(10), || {
        metric("stormwatch_tls_handshake_failures_total ") >= failures + 3
    });

    // Secrets: not in /metrics, not in the log, hidden by --print-config.
    let metrics = https_request(serve.admin, &ca, None, "GET /metrics HTTP/1.1", b"").unwrap();
    for secret in [INGEST_TOKEN, ADMIN_TOKEN] {
        assert!(!metrics.contains(secret) && !serve.log().contains(secret), "{secret} leaked");
    }
    let printed = std::process::Command::new(crate::support::binary())
        .args(["serve", "--print-config", "--config", dir.path().join("stormwatch.toml").to_str().unwrap()])
        .output()
        .unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert!(printed.contains("ingest_token = \"<set; not shown>\""), "{printed}");
    assert!(!printed.contains(INGEST_TOKEN) && !printed.contains(ADMIN_TOKEN));
    fleet.shutdown();
    stranger.shutdown();
    serve.stop();
}

/// TLS settings that cannot work stop the start, naming the field or the file.
#[test]
fn bad_tls_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &str| {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, toml).unwrap();
        let output = std::process::Command::new(crate::support::binary())
            .current_dir(dir.path())
            .args(["serve", "--config", config.to_str().unwrap(), "--otlp-grpc", "127.0.0.1:0"])
            .args(["--otlp-http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let error = run("[server.tls]\ncert_file = \"server.pem\"\n");
    assert!(error.contains("set both cert_file and key_file"), "{error}");
    let error = run("[server.tls]\ncert_file = \"missing.pem\"\nkey_file = \"missing.key\"\n");
    assert!(error.contains("missing.pem") && error.contains("cannot read certificates"), "{error}");
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    let error = run("[server.tls]\ncert_file = \"empty.pem\"\nkey_file = \"empty.pem\"\n");
    assert!(error.contains("empty.pem: holds no CERTIFICATE block"), "{error}");
}

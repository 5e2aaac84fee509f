//! `stormwatch baseline` against a running engine (the admin API's `/api/baselines`, fed by
//! real OTLP exporters) and offline against its snapshots: list, filter, show, diff.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{binary, http_get, Serve, Services, Transport};

fn stormwatch(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binary()).arg("baseline").args(args).output().expect("run stormwatch baseline");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

fn rows(json: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(json).unwrap_or_else(|e| panic!("{e}: {json}")).as_array().unwrap().clone()
}

/// `count` product requests, each looking up `authors(i)` authors, then time to complete.
fn traffic(services: &Services, count: usize, authors: impl Fn(usize) -> usize) {
    for i in 0..count {
        services.product_request(authors(i), 1);
    }
    services.flush();
    std::thread::sleep(Duration::from_millis(2_500));
}

#[tokio::test(flavor = "multi_thread")]
async fn baselines_are_listed_live_and_offline_shown_and_diffed() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let models_arg = models.to_str().unwrap().to_string();
    let serve = Serve::start(dir.path(), &["--models", &models_arg]);
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    tokio::task::block_in_place(|| traffic(&services, 60, |i| 1 + i % 3));
    let engine = format!("http://{}", serve.admin);

    // Live, from the running engine: the author lookups learned as 1-3 calls per parent.
    let (ok, out, err) = stormwatch(&["list", "--engine", &engine, "--to-kind", "database", "--json"]);
    assert!(ok, "{err}");
    let live = rows(&out);
    assert!(!live.is_empty());
    assert!(live.iter().all(|r| r["to_kind"] == "database"), "{out}");
    let lookups = live
        .iter()
        .find(|r| r["table"] == "calls_per_parent" && r["edge"].as_str().unwrap().contains("FROM users"))
        .unwrap_or_else(|| panic!("the author lookups' baseline: {out}"));
    assert_eq!((lookups["median"].as_f64(), lookups["p99"].as_f64()), (Some(2.0), Some(3.0)), "{lookups}");
    assert!(lookups["samples"].as_u64().unwrap() >= 50, "{lookups}");

    // The table, and the API's own answers: bad parameters are named.
    let (ok, table, err) = stormwatch(&["list", "--engine", &engine, "--sort", "p99", "--limit", "3"]);
    assert!(ok, "{err}");
    assert!(table.starts_with("table ") && table.contains("p99.9") && table.contains("3 of "), "{table}");
    let body = http_get(serve.admin, "/api/baselines?table=calls_per_parent&limit=1").expect("200");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["rows"].as_array().unwrap().len(), 1);
    assert!(page["total"].as_u64().unwrap() > live.len() as u64);
    let (ok, _, err) = stormwatch(&["list", "--engine", &engine, "--table", "window", "--sort", "score", "--json"]);
    assert!(ok, "sorting by anomaly score: {err}");
    let (ok, _, err) = stormwatch(&["list", "--engine", &engine, "--sort", "size"]);
    assert!(!ok && err.contains("\"size\"") && err.contains("p99"), "{err}");
    assert!(http_get(serve.admin, "/api/baselines?sortt=p99").is_none(), "an unknown parameter is a 400");

    let (ok, shown, err) = stormwatch(&["show", "FROM users", "--engine", &engine]);
    assert!(ok, "{err}");
    assert!(shown.contains("calls_per_parent") && shown.contains("calls_per_request"), "{shown}");
    let (ok, _, err) = stormwatch(&["show", "no-such-service", "--engine", &engine]);
    assert!(!ok && err.contains("no-such-service") && err.contains("baseline list"), "{err}");

    // Export from the running engine; import into a second engine, which then knows it too.
    let exported = dir.path().join("exported.json");
    let (ok, _, err) = stormwatch(&["export", "--engine", &engine, "--output", exported.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&exported).unwrap().starts_with("{\"format\":\"stormwatch.baselines\""));
    let other = tempfile::tempdir().unwrap();
    let other_models = other.path().join("models");
    let other_models_arg = other_models.to_str().unwrap().to_string();
    let second = Serve::start(other.path(), &["--models", &other_models_arg]);
    let second_engine = format!("http://{}", second.admin);
    let (ok, _, err) =
        stormwatch(&["import", exported.to_str().unwrap(), "--engine", &second_engine, "--token", "guess"]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) =
        stormwatch(&["import", exported.to_str().unwrap(), "--engine", &second_engine, "--models", &other_models_arg]);
    assert!(ok && out.contains("edges imported"), "{out}{err}");
    let (ok, out, err) = stormwatch(&["show", "FROM users", "--engine", &second_engine, "--json"]);
    assert!(
        ok && rows(&out).iter().any(|r| r["table"] == "calls_per_parent" && r["samples"].as_u64() >= Some(50)),
        "{out}{err}"
    );
    second.stop();

    tokio::task::block_in_place(|| services.shutdown());
    serve.stop();
    let before = dir.path().join("before.json");
    std::fs::copy(models.join("baselines.json"), &before).unwrap();

    // Offline, from the snapshot the engine wrote: the same per-trace baselines (the flush at
    // shutdown also judged, and learned, the last windows).
    let (ok, out, err) =
        stormwatch(&["list", "--models", &models_arg, "--to-kind", "database", "--table", "calls_per", "--json"]);
    assert!(ok, "{err}");
    let key = |r: &Value| format!("{} {} {}", r["table"], r["entry"], r["edge"]);
    let mut offline: Vec<String> = rows(&out).iter().map(key).collect();
    let mut online: Vec<String> =
        live.iter().filter(|r| r["table"].as_str().unwrap().starts_with("calls_per")).map(key).collect();
    offline.sort();
    online.sort();
    assert_eq!(offline, online);

    // More authors per product page, still within the learned tail: learned, and the diff shows
    // the lookups' baseline moving.
    let serve = Serve::start(dir.path(), &["--models", &models_arg]);
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    tokio::task::block_in_place(|| traffic(&services, 300, |i| 4 + i % 3));
    tokio::task::block_in_place(|| services.shutdown());
    serve.stop();
    let (ok, out, err) = stormwatch(&["diff", before.to_str().unwrap(), &models_arg, "--json"]);
    assert!(ok, "{err}");
    let moved = rows(&out);
    let lookups = moved
        .iter()
        .find(|c| {
            c["key"].as_str().unwrap().starts_with("calls_per_parent")
                && c["key"].as_str().unwrap().contains("FROM users")
        })
        .unwrap_or_else(|| panic!("the lookups moved: {out}"));
    assert!(lookups["after"]["p99"].as_f64() > lookups["before"]["p99"].as_f64(), "{lookups}");
    let (ok, table, _) = stormwatch(&["diff", before.to_str().unwrap(), before.to_str().unwrap()]);
    assert!(ok && table.starts_with("0 of "), "{table}");
    let (ok, _, err) = stormwatch(&["diff", "nowhere.json", &models_arg]);
    assert!(!ok && err.contains("nowhere.json"), "{err}");
}

/// Waits until a metric reaches `at_least` (the engine reloads the tuning within 2 s).
fn wait_for(serve: &Serve, name: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while serve.metric(name) < at_least {
        assert!(std::time::Instant::now() < deadline, "{name} stayed below {at_least}:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tuning_file_puts_a_detector_in_shadow_refuses_a_bad_edit_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let tuning = models.join("tuning.toml");
    std::fs::write(&tuning, "# the N+1 detector is on trial\n[detectors]\nn_plus_one = \"shadow\"\n").unwrap();
    let models_arg = models.to_str().unwrap().to_string();
    let serve = Serve::start(dir.path(), &["--models", &models_arg]);
    assert!(serve.log().contains("1 detectors in shadow"), "{}", serve.log());
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    let shadowed = "stormwatch_alerts_shadowed_total{kind=\"n_plus_one\"} ";
    tokio::task::block_in_place(|| {
        traffic(&services, 60, |i| 1 + i % 3);
        // Judged, counted, not emitted.
        services.product_request(300, 1);
        services.flush();
        wait_for(&serve, shadowed, 1);

        // A bad edit is refused with its line, and the shadow mode stays in force.
        std::fs::write(&tuning, "[detectors]\nn_plus_one = \"quiet\"\n").unwrap();
        wait_for(&serve, "stormwatch_tuning_reload_failures_total ", 1);
        assert!(serve.log().contains("tuning.toml line 2: mode \"quiet\" is not on, shadow or off"), "{}", serve.log());
        services.product_request(300, 1);
        services.flush();
        wait_for(&serve, shadowed, 2);

        // The detector back on: the next storm is an alert.
        std::fs::write(&tuning, "[detectors]\nn_plus_one = \"on\"\n").unwrap();
        wait_for(&serve, "stormwatch_tuning_reloads_total ", 1);
        services.product_request(300, 1);
        services.flush();
        wait_for(&serve, "stormwatch_alerts_emitted_total{kind=\"n_plus_one\"} ", 1);

        // A load test through the product page is allowlisted until 2099: its storms are dropped.
        std::fs::write(
            &tuning,
            "[detectors]\nn_plus_one = \"on\"\n\n[[allow]]\nentry = \"frontend `GET /product/{id}`\"\n\
             until = \"2099-01-01T00:00:00Z\"\nreason = \"load test\"\n",
        )
        .unwrap();
        wait_for(&serve, "stormwatch_tuning_reloads_total ", 2);
        assert_eq!(serve.metric("stormwatch_findings_suppressed_total "), 0);
        services.product_request(300, 1);
        services.flush();
        wait_for(&serve, "stormwatch_findings_suppressed_total ", 1);
        services.shutdown();
    });
    assert_eq!(serve.metric(shadowed), 2);
    let stdout = serve.stop();
    let alerts: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(alerts.iter().filter(|a| a["kind"] == "n_plus_one").count(), 1, "{stdout}");

    // A tuning file that does not parse stops the start, naming the line.
    std::fs::write(&tuning, "[[override]]\nkind = \"n_plus_two\"\n").unwrap();
    let output = Command::new(binary()).args(["serve", "--models", &models_arg]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("tuning.toml line 1: unknown kind \"n_plus_two\""), "{stderr}");
}

/// What-if: the same scenario, with a proposed tuning.
#[test]
fn eval_shows_what_a_proposed_tuning_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = dir.path().join("proposal.toml");
    std::fs::write(
        &tuning,
        "[detectors]\nretry_storm = \"shadow\"\n\n[[override]]\n\
         edge = \"reviews `GET /reviews` -> postgresql:shop `SELECT name FROM users WHERE id = ?`\"\n\
         threshold_factor = 100.0\nreason = \"what if the author page may do anything\"\n",
    )
    .unwrap();
    let scenario = crate::support::repo_path("tests/scenarios/shop.toml");
    let picture = dir.path().join("shop.svg");
    let output = Command::new(binary())
        .args(["eval", scenario.to_str().unwrap(), "--tuning", tuning.to_str().unwrap()])
        .args(["--picture", picture.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "two attacks are no longer caught: {stdout}");
    let result = |name: &str| stdout.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
    assert!(result("author-n-plus-one").contains("MISSED"), "{stdout}");
    assert!(result("reviews-retry-storm").contains("MISSED"), "{stdout}");
    assert!(result("page-size-fanout").contains("detected"), "{stdout}");
    assert!(stderr.contains("1 overrides") && stderr.contains("shadow mode judged retry_storm"), "{stderr}");
}

/// A raw POST to the admin API: (status line, body).
fn post(admin: std::net::SocketAddr, path: &str, token: Option<&str>, body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engineer_raises_an_edges_threshold_and_allowlists_a_job_on_a_running_engine() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let models_arg = models.to_str().unwrap().to_string();
    let serve = Serve::start(dir.path(), &["--models", &models_arg]);
    let token = std::fs::read_to_string(models.join("admin.token")).expect("a token generated at first start");
    assert!(!serve.log().contains(token.trim()), "the token is never logged");
    let engine = format!("http://{}", serve.admin);
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    let emitted = "stormwatch_alerts_emitted_total{kind=\"n_plus_one\"} ";
    tokio::task::block_in_place(|| {
        traffic(&services, 60, |i| 1 + i % 3);
        services.product_request(300, 1);
        services.flush();
        wait_for(&serve, emitted, 1);
    });

    // Why did it fire? The engine keeps its recent alerts.
    let recent: Value = serde_json::from_str(&http_get(serve.admin, "/api/alerts?kind=n_plus_one").unwrap()).unwrap();
    let fired = recent["alerts"][0].clone();
    let fired_id = fired["id"].as_str().unwrap().to_string();
    let id = fired_id.as_str();
    let (ok, out, err) = stormwatch(&["explain", id, "--engine", &engine]);
    assert!(ok, "{err}");
    assert!(out.starts_with("n_plus_one: observed 300"), "{out}");
    assert!(out.contains("rule: calls of one statement under one parent span"), "{out}");
    assert!(out.contains("baselines of the edge now:") && out.contains("calls_per_parent"), "{out}");
    assert!(out.contains(fired["exemplar_trace_ids"][0].as_str().unwrap()), "{out}");
    assert!(out.contains("tuning: detector on, edge learning, 0 matching overrides"), "{out}");
    let (ok, _, err) = stormwatch(&["explain", "no-such-alert", "--engine", &engine]);
    assert!(!ok && err.contains("404") && err.contains("no-such-alert"), "{err}");

    // The edge as the engine names it.
    let (ok, out, err) =
        stormwatch(&["list", "--engine", &engine, "--match", "FROM users", "--table", "calls_per_parent", "--json"]);
    assert!(ok, "{err}");
    let edge = rows(&out)[0]["edge"].as_str().unwrap().to_string();

    // Writes need the token.
    let change = serde_json::json!({ "action": "set", "edge": edge, "threshold_factor": 200.0 }).to_string();
    let (status, body) = post(serve.admin, "/api/tuning", None, &change);
    assert!(status.contains("401") && body.contains("Bearer"), "{status} {body}");
    let (status, _) = post(serve.admin, "/api/tuning", Some("guess"), &change);
    assert!(status.contains("401"), "{status}");
    let (status, body) = post(serve.admin, "/api/tuning", Some(token.trim()), "{\"action\":\"explode\"}");
    assert!(status.contains("400") && body.contains("explode"), "{status} {body}");

    // Through the CLI (it reads the token from the models directory).
    let (ok, out, err) = stormwatch(&[
        "set",
        "--edge",
        &edge,
        "--threshold-factor",
        "200",
        "--engine",
        &engine,
        "--models",
        &models_arg,
        "--who",
        "alice",
        "--reason",
        "the author page may list many authors",
    ]);
    assert!(ok && out.contains("1 overrides"), "{out}{err}");
    let (ok, out, err) = stormwatch(&[
        "allow",
        "--entry",
        "batch `POST /reindex`",
        "--until",
        "2099-01-01T00:00:00Z",
        "--engine",
        &engine,
        "--models",
        &models_arg,
        "--who",
        "bob",
        "--reason",
        "the nightly reindex",
    ]);
    assert!(ok && out.contains("1 allowlisted"), "{out}{err}");
    let tuning: Value = serde_json::from_str(&http_get(serve.admin, "/api/tuning").unwrap()).unwrap();
    let text = tuning["text"].as_str().unwrap();
    assert!(text.contains("by alice: set ") && text.contains("by bob: allow batch"), "{text}");
    assert_eq!(tuning["suppressed"], 0);

    // The next storm is judged against the raised threshold: no new alert.
    tokio::task::block_in_place(|| {
        services.product_request(300, 1);
        services.flush();
        wait_for(&serve, "stormwatch_findings_suppressed_total ", 1);
        services.shutdown();
    });
    assert_eq!(serve.metric(emitted), 1);

    // Shadow mode through the CLI: the detector's findings are counted, on /metrics and the API.
    let (ok, out, err) = stormwatch(&["shadow", "fanout_amplification", "--engine", &engine, "--models", &models_arg]);
    assert!(ok && out.contains("1 detectors in shadow"), "{out}{err}");
    tokio::task::block_in_place(|| {
        let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
        services.product_request(1, 400);
        services.flush();
        wait_for(&serve, "stormwatch_alerts_shadowed_total{kind=\"fanout_amplification\"} ", 1);
        services.shutdown();
    });
    let tuning: Value = serde_json::from_str(&http_get(serve.admin, "/api/tuning").unwrap()).unwrap();
    assert_eq!(tuning["shadowed"]["fanout_amplification"], 1, "{tuning}");
    assert_eq!(serve.metric("stormwatch_alerts_emitted_total{kind=\"fanout_amplification\"} "), 0);
    serve.stop();

    // The tuning survives a restart.
    let serve = Serve::start(dir.path(), &["--models", &models_arg]);
    assert!(
        serve.log().contains("1 overrides (0 frozen edges), 1 allowlisted, 1 detectors in shadow"),
        "{}",
        serve.log()
    );
    serve.stop();

    // Offline, from the alerts file and the models: the override now matches the alert's edge.
    let alerts_file = dir.path().join("stormwatch-alerts.jsonl");
    let (ok, out, err) =
        stormwatch(&["explain", &fired_id, "--alerts", alerts_file.to_str().unwrap(), "--models", &models_arg]);
    assert!(ok, "{err}");
    assert!(out.contains("tuning: detector on, edge learning, 1 matching overrides"), "{out}");
}

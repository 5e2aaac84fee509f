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
    let (ok, _, err) = stormwatch(&["list", "--engine", &engine, "--sort", "size"]);
    assert!(!ok && err.contains("\"size\"") && err.contains("p99"), "{err}");
    assert!(http_get(serve.admin, "/api/baselines?sortt=p99").is_none(), "an unknown parameter is a 400");

    let (ok, shown, err) = stormwatch(&["show", "FROM users", "--engine", &engine]);
    assert!(ok, "{err}");
    assert!(shown.contains("calls_per_parent") && shown.contains("calls_per_request"), "{shown}");
    let (ok, _, err) = stormwatch(&["show", "no-such-service", "--engine", &engine]);
    assert!(!ok && err.contains("no-such-service") && err.contains("baseline list"), "{err}");

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

//! The web console in a real browser: headless Chromium (Debian's `chromium`) loads the page
//! from a running engine, runs its script against the API, and the DOM it leaves is checked.
//! A screenshot is saved as an artefact: `console.png` in the target directory
//! (`CARGO_TARGET_DIR`, else `target/`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{repo_path, wait_until, Serve, Services, Transport};

/// Headless Chromium on `url`: the DOM after `budget_ms` of virtual time (the page's fetches
/// are waited for), and a screenshot to `screenshot`.
fn chromium(url: &str, budget_ms: u64, screenshot: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let output = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .args(extra)
            .arg(url)
            .output()
            .expect("the console test drives Debian's chromium: install it (`apt-get install chromium`; .ci/run does)");
        assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["--window-size=1400,900".into(), format!("--screenshot={}", screenshot.display())]);
    run(&["--dump-dom".into()])
}

/// An engine fed over OTLP: the console draws the services and the database as nodes, the
/// N+1 attack turns the lookups' edge red, and its alert is in the feed with the attack's
/// trace as the exemplar, linked through the configured trace URL template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_graph_an_attack_and_its_alert() {
    let dir = tempfile::tempdir().unwrap();
    let sections = "[assemble]\ntrace_idle = \"1s\"\ntrace_max_wait = \"20s\"\n\
                    [detect]\nwindow = \"1s\"\nwindow_min_requests = 5\n\
                    [server]\ntrace_url_template = \"http://jaeger.example:16686/trace/{trace_id}\"\n";
    let serve = Serve::start_with(dir.path(), sections, &[]);
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    let attack = tokio::task::block_in_place(|| {
        for round in 0..4 {
            for i in 0..20 {
                services.product_request(1 + (i + round) % 3, 1);
            }
            services.flush();
            std::thread::sleep(Duration::from_millis(600));
        }
        let attack = services.product_request(300, 1);
        services.flush();
        wait_until("the N+1 alert", Duration::from_secs(30), || {
            serve.metric("stormwatch_alerts_emitted_total{kind=\"n_plus_one\"} ") == 1
        });
        wait_until("a judged window", Duration::from_secs(30), || {
            crate::support::http_get(serve.admin, "/api/graph").is_some_and(|g| g.contains("postgresql:shop"))
        });
        attack
    });
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_path("target"), std::path::PathBuf::from);
    std::fs::create_dir_all(&target).unwrap();
    let screenshot = target.join("console.png");
    let dom = chromium(&format!("http://{}/", serve.admin), 5_000, &screenshot);
    for node in ["frontend", "catalog", "postgresql:shop"] {
        assert!(dom.contains(&format!("data-node=\"{node}\"")), "node {node} not drawn:\n{dom}");
    }
    let edge = dom.split("<path").find(|p| p.contains("data-edge=\"catalog-&gt;postgresql:shop\""));
    let edge = edge.unwrap_or_else(|| panic!("the lookups' edge is not drawn:\n{dom}"));
    assert!(edge.contains("class=\"edge anomalous"), "the attacked edge is not red: {edge}");
    let alert = dom.split("<li").find(|li| li.contains("data-kind=\"n_plus_one\""));
    let alert = alert.unwrap_or_else(|| panic!("the alert is not in the feed:\n{dom}"));
    assert!(
        alert.contains(&format!("href=\"http://jaeger.example:16686/trace/{attack}\"")),
        "the exemplar is not the attack's trace ({attack}), linked: {alert}"
    );
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000), "no screenshot");
    services.shutdown();
    serve.stop();
}

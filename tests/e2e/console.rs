//! The web console in a real browser: headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol (`browser.rs`), loads the page from a running engine fed over OTLP, and
//! the tests read the DOM it builds, click and type as a user would. Screenshots are saved as
//! artefacts in the target directory (`CARGO_TARGET_DIR`, else `target/`): `console.png`,
//! `console-large.png`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::browser::{artefact, Browser, Page};
use crate::support::{binary, http_get, http_post, repo_path, wait_until, Serve, Services, Transport};

/// Types `text` into the focus box and waits for the graph note to say `matching`: the edges
/// drawn then.
fn focus(page: &mut Page<'_>, text: &str, matching: &str) -> Vec<String> {
    page.type_into("#focus", text);
    let note = format!("document.getElementById('graph-note').textContent.includes({})", Value::from(matching));
    page.wait_for(&format!("the graph focused on {text}"), Duration::from_secs(30), &note);
    let drawn = page.eval("[...document.querySelectorAll('path.edge')].map(p => p.dataset.edge)");
    drawn.as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect()
}

/// An engine fed over OTLP, the console open before the attack: the services and the
/// database are drawn; the N+1 attack's alert arrives over the live event stream (no poll)
/// with the attack's trace as its linked exemplar, and turns the lookups' edge red; clicking
/// the edge shows its baselines against the last windows; a focus narrows the graph; the
/// tuning form freezes the edge with the admin token and is refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_graph_an_attack_and_its_alert_live() {
    let dir = tempfile::tempdir().unwrap();
    let sections = "[assemble]\ntrace_idle = \"1s\"\ntrace_max_wait = \"20s\"\n\
                    [detect]\nwindow = \"1s\"\nwindow_min_requests = 5\n\
                    [server]\ntrace_url_template = \"http://jaeger.example:16686/trace/{trace_id}\"\n";
    let serve = Serve::start_with(dir.path(), sections, &[]);
    let services = Services::new(&serve, Transport::Grpc, &["frontend", "catalog"]);
    tokio::task::block_in_place(|| {
        let normal = |rounds| {
            for round in 0..rounds {
                for i in 0..20 {
                    services.product_request(1 + (i + round) % 3, 1);
                }
                services.flush();
                std::thread::sleep(Duration::from_millis(600));
            }
        };
        normal(4);
        wait_until("a judged window", Duration::from_secs(30), || {
            http_get(serve.admin, "/api/graph").is_some_and(|g| g.contains("postgresql:shop"))
        });
        let mut browser = Browser::launch();
        let mut page = browser.open(&format!("http://{}/", serve.admin));
        page.wait_for("the live stream", Duration::from_secs(20), "stormwatch.live");
        // Polls made before the stream opened (a slow machine) do not count.
        let polls = page.eval("stormwatch.polls");
        page.wait_for(
            "the graph",
            Duration::from_secs(20),
            "document.querySelector('[data-node=\"postgresql:shop\"]')",
        );
        for node in ["frontend", "catalog"] {
            let drawn = page.eval(&format!("!!document.querySelector('[data-node=\"{node}\"]')"));
            assert_eq!(drawn, Value::Bool(true), "node {node} not drawn");
        }
        assert_eq!(page.eval("document.querySelectorAll('#feed li').length"), 0, "no alert before the attack");

        // The attack, among normal requests so its window is judged too.
        for i in 0..20 {
            services.product_request(1 + i % 3, 1);
        }
        let attack = services.product_request(300, 1);
        services.flush();
        let alert = page.wait_for(
            "the N+1 alert in the feed",
            Duration::from_secs(30),
            "(() => { const li = document.querySelector('#feed li[data-kind=\"n_plus_one\"]'); return li && li.outerHTML; })()",
        );
        let alert = alert.as_str().unwrap();
        let link = format!("href=\"http://jaeger.example:16686/trace/{attack}\"");
        assert!(alert.contains(&link), "the exemplar is not the attack's trace ({attack}), linked: {alert}");
        assert!(alert.contains("class=\"fresh\""), "not marked as new: {alert}");
        assert!(alert.contains("judged against its own baseline ("), "which baseline judged: {alert}");
        assert_eq!(page.eval("stormwatch.polls"), polls, "the alert came by polling, not live");
        let edge = "path[data-edge=\"catalog->postgresql:shop\"]";
        page.wait_for(
            "the attacked edge to turn red",
            Duration::from_secs(10),
            &format!("document.querySelector('{edge}').classList.contains('anomalous')"),
        );

        // Its baselines: calls per parent with the alert's 300 marked far above the p99, and
        // calls per request by window with the last windows.
        page.click(edge);
        let observed = page.wait_for(
            "the edge's baselines",
            Duration::from_secs(20),
            "(() => { const a = document.querySelector('#baselines svg.chart[data-table=\"calls_per_parent\"] path.alert[data-kind=\"n_plus_one\"]'); return a && Number(a.dataset.observed); })()",
        );
        assert_eq!(observed, 300, "the alert's observation");
        // A window before the attack, and the attack's (judged a moment after its alert).
        page.wait_for(
            "two windows drawn against the window baseline",
            Duration::from_secs(20),
            "document.querySelectorAll('#baselines svg.chart[data-table=\"window:work_per_entry\"] circle.window').length >= 2",
        );
        let detail = page.eval("document.getElementById('edge-detail').textContent").to_string();
        assert!(detail.contains(&attack), "the edge's exemplars lack the attack: {detail}");
        assert!(page.eval("location.hash").as_str().unwrap().contains("edge=catalog-%3Epostgresql%3Ashop"));
        // For the screenshot, the attack's window judged too, when it comes soon.
        for _ in 0..50 {
            if page.eval(&format!("Number(document.querySelector('{edge}').dataset.score) >= 3")) == Value::Bool(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        page.click("#feed li[data-kind=\"n_plus_one\"] summary");
        // Why did this fire: the engine's explanation, as `stormwatch baseline explain` gives it.
        page.click("#feed li[data-kind=\"n_plus_one\"] button");
        let why = page.wait_for(
            "the explanation",
            Duration::from_secs(10),
            "(() => { const w = document.querySelector('#feed li[data-kind=\"n_plus_one\"] .why').textContent; \
             return w.includes('rule:') && w; })()",
        );
        let why = why.as_str().unwrap();
        assert!(why.starts_with("n_plus_one: observed 300"), "{why}");
        assert!(
            why.contains("tuning: detector on, edge learning") && why.contains("baseline now: calls_per_parent"),
            "{why}"
        );
        // A redraw of the feed (as when the next alert arrives) keeps it open, with its answer.
        let kept = page.eval(
            "drawFeed(); (() => { const li = document.querySelector('#feed li[data-kind=\"n_plus_one\"]'); \
             return li.querySelector('details').open && li.querySelector('.why').textContent.includes('rule:'); })()",
        );
        assert_eq!(kept, Value::Bool(true), "the redraw closed the alert or lost its explanation");
        page.screenshot(&artefact("console.png"));

        // A focus: only the database's edge is left.
        assert_eq!(focus(&mut page, "postgres", "1 matching"), ["catalog->postgresql:shop"]);
        assert_eq!(page.eval("!!document.querySelector('[data-node=\"frontend\"]')"), Value::Bool(false));

        // The tuning form: refused with a wrong token, applied with the right one.
        let baseline_edge = page
            .wait_for(
                "the edge's baselines",
                Duration::from_secs(10),
                "(() => { const b = document.querySelector('#baselines .baseline'); return b && b.dataset.edge; })()",
            )
            .as_str()
            .unwrap()
            .to_string();
        page.click("#baselines .baseline button");
        assert_eq!(page.eval("document.getElementById('change-edge').value"), Value::from(baseline_edge.as_str()));
        page.eval("document.getElementById('change-reason').value = 'investigating the N+1'");
        page.eval("sessionStorage.setItem('stormwatch-token', 'not-the-token')");
        page.click("#apply");
        let refused = page.wait_for(
            "the refusal",
            Duration::from_secs(10),
            "document.getElementById('change-result').textContent",
        );
        assert!(refused.as_str().unwrap().contains("refused"), "{refused}");
        let token = std::fs::read_to_string(dir.path().join("models/admin.token")).unwrap();
        page.eval(&format!(
            "sessionStorage.setItem('stormwatch-token', {})",
            serde_json::to_string(token.trim()).unwrap()
        ));
        page.click("#apply");
        page.wait_for(
            "the change to apply",
            Duration::from_secs(10),
            "document.getElementById('change-result').textContent.startsWith('applied')",
        );
        let tuning = http_get(serve.admin, "/api/tuning").unwrap();
        let tuning: Value = serde_json::from_str(&tuning).unwrap();
        let text = tuning["text"].as_str().unwrap();
        assert!(text.contains(&baseline_edge) && text.contains("investigating the N+1"), "{text}");
        assert!(text.contains("console"), "the change does not say who made it: {text}");
        page.wait_for(
            "the tuning view to show it",
            Duration::from_secs(10),
            "document.getElementById('tuning').textContent.includes('investigating the N+1')",
        );
    });
    services.shutdown();
    serve.stop();
}

/// 1,000 services and 10,000 service-to-service edges in one window: the console draws the
/// 200 the API keeps by default (and 1,000 on request) without a hairball or a stall, and a
/// focus finds one service's 20 edges among the 10,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_stays_responsive_with_a_thousand_services() {
    const SERVICES: usize = 1_000;
    const CALLEES: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let sections = "[assemble]\ntrace_idle = \"1s\"\ntrace_max_wait = \"20s\"\n\
                    [detect]\nwindow = \"5s\"\nwindow_min_requests = 5\n";
    let serve = Serve::start_with(dir.path(), sections, &[]);
    // One trace per service: its entry span calls ten others, each answering with a server
    // span (OTLP/JSON over HTTP, 100 traces per request).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let callee = |i: usize, k: usize| (i + 1 + k * 97) % SERVICES;
    for chunk in (0..SERVICES).collect::<Vec<_>>().chunks(100) {
        let mut resources = Vec::new();
        for &i in chunk {
            let trace = format!("{:032x}", 0x00C0_FFEE_0000_u64 + i as u64);
            let span = |service: usize, id: u64, parent: Option<u64>, start: u64| {
                serde_json::json!({
                    "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": format!("svc-{service:04}") } }] },
                    "scopeSpans": [{ "spans": [{
                        "traceId": trace, "spanId": format!("{id:016x}"),
                        "parentSpanId": parent.map(|p| format!("{p:016x}")).unwrap_or_default(),
                        "name": "POST /work", "kind": 2,
                        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 1_000_000).to_string(),
                    }] }],
                })
            };
            let root = (i as u64) << 8 | 1;
            resources.push(span(i, root, None, now));
            for k in 0..CALLEES {
                resources.push(span(callee(i, k), root + 1 + k as u64, Some(root), now + 100_000));
            }
        }
        let body = serde_json::json!({ "resourceSpans": resources }).to_string();
        let (status, response) = http_post(serve.http, "/v1/traces", "application/json", body.as_bytes());
        assert!(status.contains("200"), "{status}: {response}");
    }
    tokio::task::block_in_place(|| {
        wait_until("the window with every edge", Duration::from_secs(60), || {
            http_get(serve.admin, "/api/graph?limit=1")
                .is_some_and(|g| g.contains(&format!("\"edges_total\":{}", SERVICES * CALLEES)))
        });
        let mut browser = Browser::launch();
        let mut page = browser.open(&format!("http://{}/", serve.admin));
        let count = |page: &mut Page<'_>, what: &str| {
            page.eval(&format!("document.querySelectorAll('{what}').length")).as_u64().unwrap()
        };
        page.wait_for("the graph", Duration::from_secs(30), "document.querySelectorAll('path.edge').length > 0");
        let (edges, nodes) = (count(&mut page, "path.edge"), count(&mut page, "g.node"));
        let timing = |page: &mut Page<'_>| {
            let t = page.eval("[stormwatch.graphMs, stormwatch.drawMs]");
            (t[0].as_f64().unwrap(), t[1].as_f64().unwrap())
        };
        let (fetch_200, draw_200) = timing(&mut page);
        assert_eq!(edges, 200, "the default view is not the API's 200 edges");
        assert!(nodes <= 400, "{nodes} nodes for 200 edges");
        let note = page.eval("document.getElementById('graph-note').textContent").to_string();
        assert!(note.contains("200 of 10000 edges"), "{note}");
        page.screenshot(&artefact("console-large.png"));
        // Zoom: the picture grows (the panel scrolls), and "fit" brings it back.
        let width = |page: &mut Page<'_>| page.eval("Number(document.getElementById('graph').getAttribute('width'))");
        let fitted = width(&mut page).as_f64().unwrap();
        page.click("#zoom-in");
        let zoomed = width(&mut page).as_f64().unwrap();
        assert!((zoomed - fitted * 1.5).abs() <= 1.0, "zoom in: {fitted} px to {zoomed} px");
        page.click("#zoom-fit");
        assert_eq!(width(&mut page).as_f64().unwrap(), fitted, "fit");

        // 1,000 edges on request.
        let started = Instant::now();
        page.choose("#limit", "1000");
        page.wait_for("1,000 edges", Duration::from_secs(30), "document.querySelectorAll('path.edge').length === 1000");
        let shown_1000 = started.elapsed();
        let (fetch_1000, draw_1000) = timing(&mut page);

        // One service among a thousand: its ten callees and its ten callers.
        let focused = focus(&mut page, "svc-0042", "20 matching");
        assert_eq!(focused.len(), 20, "{focused:?}");
        assert!(focused.iter().all(|e| e.contains("svc-0042")), "{focused:?}");
        // Clicking a node focuses on it.
        page.click("g.node[data-node=\"svc-0043\"]");
        page.wait_for(
            "the node's focus",
            Duration::from_secs(30),
            "location.hash.includes('focus=svc-0043') && [...document.querySelectorAll('path.edge')].every(p => p.dataset.edge.includes('svc-0043'))",
        );
        eprintln!(
            "console with {SERVICES} services and {} edges: 200 edges fetched in {fetch_200:.0} ms, drawn in \
             {draw_200:.0} ms; 1,000 edges fetched in {fetch_1000:.0} ms, drawn in {draw_1000:.0} ms \
             ({} ms from the click)",
            SERVICES * CALLEES,
            shown_1000.as_millis()
        );
        // Generous bounds: a stall (a layout gone quadratic, a hairball of 10,000 paths) fails.
        assert!(draw_200 < 2_000.0 && draw_1000 < 5_000.0, "drawing stalls: {draw_200} ms, {draw_1000} ms");
        assert!(shown_1000 < Duration::from_secs(10), "1,000 edges took {shown_1000:?}");
    });
    serve.stop();
}

/// The console open while `stormwatch loadgen --send` plays the shop scenario into an engine
/// over OTLP/gRPC: the shop's services, database and cache are drawn, the attacked edges are
/// red, and the N+1 and fan-out alerts arrive in the feed with exemplars that are the
/// scenario's labelled attack traces.
#[test]
fn the_console_shows_a_loadgen_scenario_and_its_attacks() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--alerts-file", ""]);
    let mut browser = Browser::launch();
    let mut page = browser.open(&format!("http://{}/", serve.admin));
    page.wait_for("the live stream", Duration::from_secs(20), "stormwatch.live");
    let polls = page.eval("stormwatch.polls");
    let labels = dir.path().join("shop.labels.json");
    let output = std::process::Command::new(binary())
        .args(["loadgen", "--send", &format!("grpc://{}", serve.grpc), "--rate", "0", "-q", "--labels"])
        .arg(&labels)
        .arg(repo_path("tests/scenarios/shop.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "loadgen: {}", String::from_utf8_lossy(&output.stderr));
    let labels: Value = serde_json::from_str(&std::fs::read_to_string(&labels).unwrap()).unwrap();
    for (kind, edge) in [("n_plus_one", "reviews->postgresql:shop"), ("fanout_amplification", "gateway->reviews")] {
        let exemplars = page.wait_for(
            &format!("the {kind} alert"),
            Duration::from_secs(60),
            &format!(
                "(() => {{ const a = stormwatch.alerts.find(a => a.kind === '{kind}'); \
                 return a && document.querySelector('#feed li[data-id=\"' + a.id + '\"]') && a.exemplar_trace_ids; }})()"
            ),
        );
        let change = labels["changes"].as_array().unwrap().iter().find(|c| c["kind"] == kind).unwrap();
        let attack: Vec<&Value> = change["trace_ids"].as_array().unwrap().iter().collect();
        for id in exemplars.as_array().unwrap() {
            assert!(attack.contains(&id), "{kind}: exemplar {id} is not one of the attack's traces {attack:?}");
        }
        page.wait_for(
            &format!("{edge} to turn red"),
            Duration::from_secs(30),
            &format!("(() => {{ const e = document.querySelector('path[data-edge=\"{edge}\"]'); return e && e.classList.contains('anomalous'); }})()"),
        );
    }
    let nodes = page.eval("[...document.querySelectorAll('g.node')].map(n => n.dataset.node).sort()");
    for node in ["gateway", "catalog", "reviews", "postgresql:shop"] {
        assert!(nodes.as_array().unwrap().contains(&Value::from(node)), "{node} not drawn: {nodes}");
    }
    assert!(
        nodes.as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("redis")),
        "the cache is not drawn: {nodes}"
    );
    assert_eq!(page.eval("stormwatch.polls"), polls, "the console fell back to polling");
    drop(browser);
    serve.stop();
}

/// Off loopback every API read needs the admin token: the console asks for it, and once it is
/// given reads the API and opens the live stream with it.
#[test]
fn the_console_asks_for_the_admin_token_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start_with_public_admin(dir.path(), "[assemble]\ntrace_idle = \"1s\"\n");
    let mut browser = Browser::launch();
    let mut page = browser.open(&format!("http://{}/", serve.admin));
    page.wait_for(
        "the token prompt",
        Duration::from_secs(20),
        "getComputedStyle(document.getElementById('token-box')).display !== 'none'",
    );
    let status = page.eval("document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().contains("401"), "{status}");
    assert_eq!(page.eval("stormwatch.live"), Value::Bool(false), "the stream opened without the token");
    let token = std::fs::read_to_string(dir.path().join("models/admin.token")).unwrap();
    page.type_into("#token", token.trim());
    page.click("#save-token");
    page.wait_for("the live stream, with the token", Duration::from_secs(20), "stormwatch.live");
    page.wait_for(
        "the API read with the token",
        Duration::from_secs(20),
        "document.getElementById('graph-note').textContent.includes('edges')",
    );
    assert_eq!(
        page.eval("getComputedStyle(document.getElementById('token-box')).display"),
        Value::from("none"),
        "the prompt stayed"
    );
    drop(browser);
    serve.stop();
}

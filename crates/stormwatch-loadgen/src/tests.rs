use std::collections::HashMap;

use super::*;

const SMALL: &str = r#"
name = "tiny"
seed = 7
duration = "2m"
rate = 20.0

[[entries]]
service = "web"
operation = "GET /page"
weight = 1.0
query = ["size"]

[services.web."GET /page"]
calls = [
  { service = "api GET /items", count = "uniform(2,4)" },
  { name = "page-cache", cache = "redis", miss_ratio = 0.5, on_miss = [
    { db = "postgresql:app", statement = "SELECT * FROM pages WHERE id = ?" } ] },
  { queue = "kafka:views" },
]

[services.api."GET /items"]
error_rate = 0.0
calls = [{ name = "item-row", db = "postgresql:app", statement = "SELECT * FROM items WHERE id = ?", count = "3" }]

[[changes]]
name = "big-page"
kind = "n_plus_one"
start = "1m"
end = "90s"
entry = "web GET /page"
call = "item-row"
count = "50"
detect_as = ["n_plus_one"]

[[changes]]
name = "crowd"
kind = "flash_crowd"
start = "30s"
end = "60s"
factor = 4.0
"#;

fn tiny() -> Scenario {
    Scenario::parse(SMALL).unwrap()
}

#[test]
fn same_seed_same_traffic() {
    let scenario = tiny();
    let a: Vec<_> = Generator::new(&scenario).take(50).map(|t| (t.trace_id, t.spans, t.end_unix_nano)).collect();
    let b: Vec<_> = Generator::new(&scenario).take(50).map(|t| (t.trace_id, t.spans, t.end_unix_nano)).collect();
    assert_eq!(a, b);
    let mut other = tiny();
    other.seed = 8;
    let c: Vec<_> = Generator::new(&other).take(50).map(|t| t.trace_id).collect();
    assert_ne!(a.iter().map(|t| t.0).collect::<Vec<_>>(), c);
}

#[test]
fn traces_look_like_sdk_output_and_changes_are_labelled() {
    let scenario = tiny();
    let mut generator = Generator::new(&scenario);
    let traces: Vec<GeneratedTrace> = generator.by_ref().collect();
    let labels = generator.into_labels();
    // Rate 20/s for 120 s, x4 for 30 s: about 2400 + 1800.
    assert!((3_500..5_000).contains(&traces.len()), "{}", traces.len());
    let first = &traces[0];
    let services: Vec<String> = first
        .request
        .resource_spans
        .iter()
        .map(|rs| {
            rs.resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .unwrap()
                .value
                .as_ref()
                .unwrap()
                .value
                .clone()
                .map(|v| format!("{v:?}"))
                .unwrap()
        })
        .collect();
    assert_eq!(services.len(), 2, "web and api each export their spans: {services:?}");
    let spans: Vec<_> = first.request.resource_spans.iter().flat_map(|rs| &rs.scope_spans[0].spans).collect();
    let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
    assert_eq!(roots, 1);
    // Every parent exists in the trace; ids are the trace's.
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
    assert!(spans.iter().all(|s| s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id)));
    assert!(spans.iter().all(|s| s.trace_id == first.trace_id.to_vec()));
    // Realistic sizes: 200-600 bytes a span on the wire.
    let bytes = prost::Message::encoded_len(&first.request) / spans.len();
    assert!((200..=600).contains(&bytes), "{bytes} bytes per span");

    let by_name: HashMap<&str, &ChangeLabel> = labels.changes.iter().map(|c| (c.name.as_str(), c)).collect();
    let big = by_name["big-page"];
    assert!(big.attack && big.traces > 500, "{}", big.traces);
    assert_eq!(big.trace_ids.len() as u64, big.traces);
    let crowd = by_name["crowd"];
    assert!(!crowd.attack);
    // Labelled traces are exactly those with 50 item rows under one parent.
    let labelled: std::collections::HashSet<&String> = big.trace_ids.iter().collect();
    for trace in &traces {
        let rows = trace
            .request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans[0].spans)
            .filter(|s| {
                s.attributes
                    .iter()
                    .any(|kv| kv.key == "db.query.text" && format!("{:?}", kv.value).contains("FROM items"))
            })
            .count();
        let id = stormwatch_model::TraceId(trace.trace_id).to_string();
        let per_call = if labelled.contains(&id) { 50 } else { 3 };
        assert_eq!(rows % per_call, 0, "trace {id}: {rows} rows");
    }
}

/// A correlated shift multiplies the work of every call it names (loops by count, caches by
/// miss ratio), only while active, and labels the traces it touched.
#[test]
fn correlated_shift_scales_every_named_call() {
    let text = format!(
        "{SMALL}\n[[changes]]\nname = \"busting\"\nkind = \"correlated_shift\"\nstart = \"30s\"\nend = \"90s\"\n\
         calls = [\"item-row\", \"page-cache\"]\nfactor = 1.5\ndetect_as = [\"correlated_storm\"]\n"
    )
    .replace("[[changes]]\nname = \"big-page\"", "[[changes]]\nname = \"big-page\"\nshare = 0.0");
    let scenario = Scenario::parse(&text).unwrap();
    let mut generator = Generator::new(&scenario);
    // (item rows, page reads, traces) before, during and after the shift.
    let mut phases = [(0u64, 0u64, 0u64); 3];
    for trace in generator.by_ref() {
        let offset = trace.start_unix_nano - scenario.start_unix_seconds * 1_000_000_000;
        let phase = if offset < 30_000_000_000 {
            0
        } else if offset < 90_000_000_000 {
            1
        } else {
            2
        };
        let texts: Vec<String> = trace
            .request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans[0].spans)
            .flat_map(|s| &s.attributes)
            .filter(|kv| kv.key == "db.query.text")
            .map(|kv| format!("{:?}", kv.value))
            .collect();
        phases[phase].0 += texts.iter().filter(|t| t.contains("FROM items")).count() as u64;
        phases[phase].1 += texts.iter().filter(|t| t.contains("FROM pages")).count() as u64;
        phases[phase].2 += 1;
    }
    let per_trace =
        |(rows, pages, traces): (u64, u64, u64)| (rows as f64 / traces as f64, pages as f64 / traces as f64);
    let (before, during, after) = (per_trace(phases[0]), per_trace(phases[1]), per_trace(phases[2]));
    // 3 items x 3 rows = 9 rows a page; half the pages miss the cache.
    assert!((before.0 - 9.0).abs() < 0.3 && (after.0 - 9.0).abs() < 0.3, "{before:?} {after:?}");
    assert!((during.0 - 13.5).abs() < 0.5, "rows during the shift: {during:?}");
    assert!((before.1 - 0.5).abs() < 0.05 && (during.1 - 0.75).abs() < 0.05, "{before:?} {during:?}");
    let labels = generator.into_labels();
    let busting = labels.changes.iter().find(|c| c.name == "busting").unwrap();
    assert!(busting.attack && busting.traces as f64 > 0.9 * phases[1].2 as f64, "{}", busting.traces);

    let unknown = text.replace("\"item-row\", \"page-cache\"", "\"item-row\", \"nope\"");
    assert!(Scenario::parse(&unknown).unwrap_err().to_string().contains("no call is labelled \"nope\""));
}

#[test]
fn scenario_errors_name_the_field() {
    let broken = SMALL.replace("operation = \"GET /page\"\nweight", "operation = \"GET /nope\"\nweight");
    assert!(Scenario::parse(&broken).unwrap_err().to_string().contains("entries[0]"));
    let broken = SMALL.replace("count = \"3\"", "count = \"zipf(3)\"");
    assert!(Scenario::parse(&broken).unwrap_err().to_string().contains("unknown distribution"));
    let broken = SMALL.replace("detect_as = [\"n_plus_one\"]", "");
    assert!(Scenario::parse(&broken).unwrap_err().to_string().contains("detect_as"));
    let broken = SMALL.replace("end = \"90s\"", "end = \"10m\"");
    assert!(Scenario::parse(&broken).unwrap_err().to_string().contains("ends after"));
    let broken = SMALL.replace("rate = 20.0", "rate = 20.0\nspeed = 3");
    assert!(Scenario::parse(&broken).unwrap_err().to_string().contains("speed"));
}

#[test]
fn scoring_counts_detections_misses_and_false_alerts() {
    use stormwatch_model::{Alert, AlertBaseline, AlertKind, AlertWindow, Severity, ALERT_SCHEMA};
    let scenario = tiny();
    let mut generator = Generator::new(&scenario);
    generator.by_ref().for_each(drop);
    let labels = generator.into_labels();
    let attack = labels.changes.iter().find(|c| c.name == "big-page").unwrap();
    let alert = |kind: AlertKind, severity: Severity, at: u64, exemplar: &str| Alert {
        schema: ALERT_SCHEMA.into(),
        id: "0".repeat(32),
        fingerprint: "0".repeat(16),
        kind,
        severity,
        detected_at: stormwatch_model::rfc3339(0),
        window: AlertWindow { start: stormwatch_model::rfc3339(at), end: stormwatch_model::rfc3339(at + 1_000_000) },
        entry: None,
        edge: None,
        observed: 50.0,
        expected: 3.0,
        threshold: 13.0,
        unit: "calls_per_parent".into(),
        score: 3.8,
        count: 1,
        exemplar_trace_ids: vec![exemplar.into()],
        contributors: vec![],
        explanation: "x".into(),
        baseline: AlertBaseline { samples: 300, since: stormwatch_model::rfc3339(0), from: None },
    };
    let during = attack.start_unix_nano + 2_000_000_000;
    let before = labels.start_unix_nano + 40_000_000_000; // during the flash crowd
    let alerts = vec![
        alert(AlertKind::NPlusOne, Severity::Critical, during, &attack.trace_ids[0]),
        alert(AlertKind::FanoutAmplification, Severity::Warning, before, &"a".repeat(32)),
    ];
    let report = eval::score(&labels, &scenario.eval, &alerts, 10, 100);
    let attack_result = report.changes.iter().find(|c| c.label.name == "big-page").unwrap();
    assert_eq!(attack_result.outcome, eval::Outcome::Detected);
    assert!(attack_result.exemplar_match);
    assert!(attack_result.time_to_detect.unwrap().as_secs_f64() > 1.9);
    let crowd = report.changes.iter().find(|c| c.label.name == "crowd").unwrap();
    assert_eq!(crowd.outcome, eval::Outcome::FalseAlarm);
    assert_eq!(report.false_alerts, [0, 1, 0]);
    assert!(!report.passed());
    let table = report.render();
    assert!(table.contains("big-page") && table.contains("FALSE ALARM") && table.contains("result: FAIL"), "{table}");
    let svg = svg::render(&report, &["n_plus_one", "fanout_amplification"]);
    assert!(svg.starts_with("<svg") && svg.contains("big-page") && svg.trim_end().ends_with("</svg>"));

    // Without the false alert it passes.
    let report = eval::score(&labels, &scenario.eval, &alerts[..1], 10, 100);
    assert!(report.passed(), "{}", report.render());
}

/// Behind a proxy, an entry span's peer is the proxy and the client is only in the captured
/// `X-Forwarded-For` header (an array, as SDKs record captured headers); inner spans carry
/// neither.
#[test]
fn behind_a_proxy_the_client_is_in_the_forwarding_header() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let mut scenario = tiny();
    scenario.behind_proxy = true;
    let trace = Generator::new(&scenario).next().unwrap();
    let spans: Vec<_> =
        trace.request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
    let attribute = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
    };
    let root = spans.iter().find(|s| s.parent_span_id.is_empty()).unwrap();
    assert_eq!(attribute(root, "network.peer.address"), Some(Value::StringValue("10.0.0.2".into())));
    assert!(attribute(root, "client.address").is_none());
    let Some(Value::ArrayValue(forwarded)) = attribute(root, "http.request.header.x-forwarded-for") else {
        panic!("no captured header on {root:?}")
    };
    let Some(Value::StringValue(client)) = forwarded.values[0].value.clone() else { panic!("{forwarded:?}") };
    assert!(client.starts_with("10."), "{client}");
    for inner in spans.iter().filter(|s| !s.parent_span_id.is_empty()) {
        assert!(attribute(inner, "http.request.header.x-forwarded-for").is_none());
    }
}

/// `sampling = 0.1`: about one trace in ten is exported, each span saying so in its
/// `tracestate`, and the traces kept are the unsampled run's (same ids, same spans).
#[test]
fn sampling_keeps_a_share_of_the_same_traces_and_says_so() {
    let whole: Vec<GeneratedTrace> = Generator::new(&tiny()).collect();
    let mut sampled_scenario = tiny();
    sampled_scenario.sampling = Some(0.1);
    let sampled: Vec<GeneratedTrace> = Generator::new(&sampled_scenario).collect();
    let share = sampled.len() as f64 / whole.len() as f64;
    assert!((0.07..=0.13).contains(&share), "{} of {}", sampled.len(), whole.len());
    let by_id: HashMap<[u8; 16], &GeneratedTrace> = whole.iter().map(|t| (t.trace_id, t)).collect();
    for trace in &sampled {
        let original = by_id[&trace.trace_id];
        assert_eq!(trace.spans, original.spans);
        for span in trace.request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
            assert_eq!(span.trace_state, "ot=th:e6666666666666");
        }
    }
    assert!(whole.iter().all(|t| t.request.resource_spans[0].scope_spans[0].spans[0].trace_state.is_empty()));
    assert!(Scenario::parse(&format!("sampling = 1.5\n{SMALL}")).unwrap_err().to_string().contains("sampling"));
}

/// Durations of the `item-row` queries (milliseconds) before, during and after [30 s, 90 s).
fn item_row_millis(scenario: &Scenario) -> ([Vec<f64>; 3], Labels) {
    let mut generator = Generator::new(scenario);
    let mut phases: [Vec<f64>; 3] = Default::default();
    for trace in generator.by_ref() {
        for span in trace.request.resource_spans.iter().flat_map(|rs| &rs.scope_spans[0].spans) {
            let offset = span.start_time_unix_nano - scenario.start_unix_seconds * 1_000_000_000;
            let phase = match offset / 1_000_000_000 {
                0..30 => 0,
                30..90 => 1,
                _ => 2,
            };
            if span.attributes.iter().any(|kv| kv.key == "db.query.text" && format!("{:?}", kv.value).contains("items"))
            {
                phases[phase].push((span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6);
            }
        }
    }
    (phases, generator.into_labels())
}

#[test]
fn scanning_queries_and_slowdowns_change_time_not_counts() {
    let quiet = SMALL.replace("[[changes]]\nname = \"big-page\"", "[[changes]]\nname = \"big-page\"\nshare = 0.0");
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let scanning = Scenario::parse(&format!(
        "{quiet}\n[[changes]]\nname = \"scan\"\nkind = \"scanning_query\"\nstart = \"30s\"\nend = \"90s\"\n\
         entry = \"web GET /page\"\ncall = \"item-row\"\nduration_ms = \"uniform(30,60)\"\nshare = 0.5\n\
         detect_as = [\"cost_amplification\"]\n"
    ))
    .unwrap();
    let ([before, during, after], labels) = item_row_millis(&scanning);
    assert!(median(&before) < 2.0 && median(&after) < 2.0, "{} {}", median(&before), median(&after));
    let scanned = during.iter().filter(|ms| (30.0..=61.0).contains(*ms)).count() as f64 / during.len() as f64;
    assert!((0.4..0.6).contains(&scanned), "half the requests scan: {scanned}");
    assert!(labels.changes.iter().any(|c| c.name == "scan" && c.attack && c.traces > 0));
    // Waits for a lock: a few queries in a thousand take milliseconds more.
    let slow = before.iter().chain(&after).filter(|ms| **ms > 5.0).count();
    assert!(slow > 0 && slow * 100 < before.len() + after.len(), "{slow} of {}", before.len() + after.len());

    let slowdown = Scenario::parse(&format!(
        "{quiet}\n[[changes]]\nname = \"vacuum\"\nkind = \"slowdown\"\nstart = \"30s\"\nend = \"90s\"\n\
         db = \"postgresql:app\"\nfactor = 10.0\n"
    ))
    .unwrap();
    let ([before, during, _], labels) = item_row_millis(&slowdown);
    // Ramping up over 15 s, then ten times slower.
    let late: Vec<f64> = during[during.len() / 2..].to_vec();
    assert!(median(&late) > 8.0 * median(&before), "{} vs {}", median(&late), median(&before));
    assert!(labels.changes.iter().any(|c| c.name == "vacuum" && !c.attack));
    let wrong = format!("{quiet}\n[[changes]]\nname = \"v\"\nkind = \"slowdown\"\nstart = \"30s\"\nend = \"90s\"\n");
    assert!(Scenario::parse(&wrong).unwrap_err().to_string().contains("a slowdown change needs `db`"));
}

#[test]
fn an_exfiltration_makes_a_share_of_an_operations_responses_huge_and_request_sizes_are_reported() {
    let quiet =
        SMALL.replace("[[changes]]\nname = \"big-page\"", "[[changes]]\nname = \"big-page\"\nshare = 0.0").replace(
            "[services.web.\"GET /page\"]\n",
            "[services.web.\"GET /page\"]\nresponse_bytes = \"uniform(1000,2000)\"\nrequest_bytes = \"100\"\n",
        );
    let scenario = Scenario::parse(&format!(
        "{quiet}\n[[changes]]\nname = \"dump\"\nkind = \"exfiltration\"\nstart = \"30s\"\nend = \"90s\"\n\
         operation = \"web GET /page\"\nresponse_bytes = \"50000000\"\nshare = 0.25\ndetect_as = [\"egress_amplification\"]\n"
    ))
    .unwrap();
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let int = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
        span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::IntValue(n) => Some(*n),
            _ => None,
        })
    };
    let mut generator = Generator::new(&scenario);
    let (mut dumped, mut during, mut outside_dumped) = (0, 0, 0);
    for trace in generator.by_ref() {
        let offset = (trace.start_unix_nano - scenario.start_unix_seconds * 1_000_000_000) / 1_000_000_000;
        let root = trace
            .request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans[0].spans)
            .find(|s| s.parent_span_id.is_empty())
            .unwrap();
        assert_eq!(int(root, "http.request.body.size"), Some(100));
        let huge = int(root, "http.response.body.size") == Some(50_000_000);
        if (30..90).contains(&offset) {
            during += 1;
            dumped += u64::from(huge);
        } else {
            outside_dumped += u64::from(huge);
        }
    }
    assert_eq!(outside_dumped, 0);
    let share = dumped as f64 / during as f64;
    assert!((0.18..0.32).contains(&share), "a quarter of the requests: {share}");
    assert!(generator.into_labels().changes.iter().any(|c| c.name == "dump" && c.attack && c.traces == dumped));
}

#[test]
fn a_row_exfiltration_makes_a_database_call_return_a_table_and_rows_do_not_move_other_draws() {
    let quiet = SMALL.replace("[[changes]]\nname = \"big-page\"", "[[changes]]\nname = \"big-page\"\nshare = 0.0");
    let with_rows = quiet.replace(
        "name = \"item-row\", db = \"postgresql:app\", statement = \"SELECT * FROM items WHERE id = ?\"",
        "name = \"item-row\", db = \"postgresql:app\", statement = \"SELECT * FROM items WHERE id = ?\", rows = \"uniform(1,5)\"",
    );
    let scenario = Scenario::parse(&format!(
        "{with_rows}\n[[changes]]\nname = \"table-read\"\nkind = \"exfiltration\"\nstart = \"30s\"\nend = \"90s\"\n\
         call = \"item-row\"\nrows = \"400000\"\nshare = 0.5\ndetect_as = [\"egress_amplification\"]\n"
    ))
    .unwrap();
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let rows_of = |span: &opentelemetry_proto::tonic::trace::v1::Span| {
        span.attributes.iter().find(|kv| kv.key == "db.response.returned_rows").and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                Value::IntValue(n) => Some(*n),
                _ => None,
            }
        })
    };
    let (mut ordinary, mut tables, mut outside, mut unexpected) = (0, 0, 0, 0);
    let mut generator = Generator::new(&scenario);
    for trace in generator.by_ref() {
        for span in trace.request.resource_spans.iter().flat_map(|rs| &rs.scope_spans[0].spans) {
            let offset = (span.start_time_unix_nano - scenario.start_unix_seconds * 1_000_000_000) / 1_000_000_000;
            let items =
                span.attributes.iter().any(|kv| kv.key == "db.query.text" && format!("{kv:?}").contains("items"));
            match (items, rows_of(span)) {
                (true, Some(400_000)) if (30..90).contains(&offset) => tables += 1,
                (true, Some(400_000)) => outside += 1,
                (true, Some(rows)) if (1..=5).contains(&rows) => ordinary += 1,
                (false, None) => {}
                _ => unexpected += 1,
            }
        }
    }
    assert_eq!((outside, unexpected), (0, 0), "rows only on the items query, the table only while the change runs");
    assert!(tables > 100 && ordinary > tables, "{tables} tables read, {ordinary} ordinary queries");
    assert!(generator.into_labels().changes.iter().any(|c| c.name == "table-read" && c.attack && c.traces > 0));
    // Rows are drawn apart: the traffic's times and counts are those of the scenario without them.
    let spans = |text: &str| {
        Generator::new(&Scenario::parse(text).unwrap())
            .map(|t| (t.start_unix_nano, t.end_unix_nano, t.spans))
            .collect::<Vec<_>>()
    };
    assert_eq!(spans(&with_rows), spans(&quiet));
    let wrong = format!(
        "{quiet}\n[[changes]]\nname = \"t\"\nkind = \"exfiltration\"\nstart = \"30s\"\nend = \"90s\"\nrows = \"9\"\n"
    );
    assert!(
        Scenario::parse(&wrong).unwrap_err().to_string().contains("needs `call`"),
        "{}",
        Scenario::parse(&wrong).unwrap_err()
    );
}

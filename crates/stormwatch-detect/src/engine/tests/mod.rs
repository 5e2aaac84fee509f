use stormwatch_model::builder::TraceBuilder;
use stormwatch_model::{Alert, AlertKind, Severity, Span};

use super::*;
use crate::features::tests::product_trace;

mod classes;
mod contention;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SEC;

fn engine() -> Engine {
    Engine::new(EngineConfig::default(), BaselineStore::new(10_000), || 42)
}

/// `count` ordinary product requests, one every 100 ms, with author N+1 loops of 1-5.
fn learn_normal(engine: &mut Engine, first_seed: u64, count: u64) -> Vec<Alert> {
    let mut out = Vec::new();
    for i in 0..count {
        let seed = first_seed + i;
        engine.push(product_trace(seed, T0 + seed * SEC / 10, 1 + (seed % 5) as usize), &mut out);
    }
    out
}

fn settle(engine: &mut Engine, seed: u64, out: &mut Vec<Alert>) {
    engine.advance_to(T0 + seed * SEC / 10 + 10 * SEC, out);
}

#[test]
fn a_normal_loop_stays_quiet_and_the_same_loop_at_400_fires_once() {
    let mut engine = engine();
    let alerts = learn_normal(&mut engine, 0, 400);
    assert!(alerts.is_empty(), "normal traffic alerted: {alerts:#?}");

    let mut out = Vec::new();
    let attack = product_trace(1_000, T0 + 401 * SEC / 10, 400);
    let attack_id = attack[0].trace_id;
    engine.push(attack, &mut out);
    settle(&mut engine, 1_000, &mut out);
    assert_eq!(out.len(), 1, "one incident, one alert: {out:#?}");
    let alert = &out[0];
    assert_eq!(alert.kind, AlertKind::NPlusOne);
    let edge = alert.edge.as_ref().unwrap();
    assert_eq!((edge.from.service.as_str(), edge.from.operation.as_str()), ("reviews", "GET /reviews"));
    assert_eq!(edge.to.operation, "SELECT name FROM users WHERE id = ?");
    assert_eq!(edge.to.kind, "database");
    let entry = alert.entry.as_ref().unwrap();
    assert_eq!((entry.service.as_str(), entry.operation.as_str()), ("gateway", "GET /product/<int:pid>"));
    assert_eq!(alert.exemplar_trace_ids, vec![attack_id.to_string()]);
    assert_eq!((alert.observed, alert.expected), (400.0, 3.0));
    assert_eq!(alert.threshold, 15.0);
    assert_eq!(alert.unit, "calls_per_parent");
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!(alert.count, 1);
    assert!(alert.baseline.samples >= 200);
    assert!(alert.explanation.contains("400 times"), "{}", alert.explanation);
    assert_eq!(alert.detected_at, "1970-01-01T00:00:00.000Z");
}

#[test]
fn a_storm_is_throttled_into_a_counted_summary_and_does_not_train() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 300);
    let mut out = Vec::new();
    for seed in 300..400u64 {
        engine.push(product_trace(seed, T0 + seed * SEC / 10, 400), &mut out);
    }
    settle(&mut engine, 400, &mut out);
    assert_eq!(out.len(), 1, "first alert only, the rest folded");
    let fingerprint = out[0].fingerprint.clone();
    // Past the throttle window the summary arrives, carrying the count.
    engine.advance_to(T0 + 400 * SEC, &mut out);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[1].fingerprint, fingerprint);
    assert!(out[1].count >= 98 && out[1].count <= 99, "count {}", out[1].count);
    assert_eq!(out[1].exemplar_trace_ids.len(), 5);
    // The attack did not become normal: it still fires.
    let mut later = Vec::new();
    engine.push(product_trace(5_000, T0 + 500 * SEC, 400), &mut later);
    engine.advance_to(T0 + 520 * SEC, &mut later);
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].kind, AlertKind::NPlusOne);
    assert_eq!(engine.stats().alerts[AlertKind::NPlusOne.index()], 3);
}

#[test]
fn fanout_to_a_service_is_reported_at_its_source() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 300);
    // The gateway calls reviews 60 times under one span: each reviews call is normal, but
    // the reviews -> sqlite work it causes is a consequence, not a second incident.
    let mut t = TraceBuilder::new(7_777, T0 + 31 * SEC);
    let root = t.server("gateway", "GET /product/<int:pid>", None);
    let call = t.client("gateway", "GET", root);
    let items = t.server("catalog", "GET /items/<int:pid>", Some(call));
    t.db("catalog", "sqlite", "SELECT * FROM items WHERE id = ?", items);
    for _ in 0..60 {
        let call = t.client("gateway", "GET", root);
        let reviews = t.server("reviews", "GET /reviews", Some(call));
        t.db("reviews", "sqlite", "SELECT * FROM reviews WHERE product_id = ?", reviews);
        t.db("reviews", "sqlite", "SELECT name FROM users WHERE id = ?", reviews);
    }
    let mut out = Vec::new();
    engine.push(t.build(), &mut out);
    engine.advance_to(T0 + 60 * SEC, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].kind, AlertKind::FanoutAmplification);
    let edge = out[0].edge.as_ref().unwrap();
    assert_eq!((edge.from.service.as_str(), edge.to.service.as_str()), ("gateway", "reviews"));
    assert_eq!(out[0].observed, 60.0);
}

#[test]
fn work_spread_over_many_parents_is_request_amplification() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 300);
    // 50 internal spans each making one normal items lookup: no parent is unusual, the
    // request as a whole is.
    let mut t = TraceBuilder::new(8_888, T0 + 31 * SEC);
    let root = t.server("gateway", "GET /product/<int:pid>", None);
    let call = t.client("gateway", "GET", root);
    let items = t.server("catalog", "GET /items/<int:pid>", Some(call));
    for _ in 0..50 {
        let chunk = t.internal("catalog", "load", items);
        t.db("catalog", "sqlite", "SELECT * FROM items WHERE id = ?", chunk);
    }
    let mut out = Vec::new();
    engine.push(t.build(), &mut out);
    engine.advance_to(T0 + 60 * SEC, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].kind, AlertKind::RequestAmplification);
    assert_eq!(out[0].unit, "calls_per_request");
    assert_eq!(out[0].edge.as_ref().unwrap().to.operation, "SELECT * FROM items WHERE id = ?");
}

#[test]
fn nothing_fires_before_the_learning_minimum() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 50);
    let mut out = Vec::new();
    engine.push(product_trace(999, T0 + 6 * SEC, 400), &mut out);
    engine.flush(&mut out);
    assert!(out.is_empty());
}

#[test]
fn same_input_same_alerts() {
    let run = || {
        let mut engine = engine();
        let mut out = learn_normal(&mut engine, 0, 300);
        let spans: Vec<Span> = (300..320).flat_map(|s| product_trace(s, T0 + s * SEC / 10, 200)).collect();
        engine.push(spans, &mut out);
        engine.flush(&mut out);
        out
    };
    let (a, b) = (run(), run());
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

/// A request whose totals are large only because a heavy-tailed loop is in its usual tail is
/// not amplification; the same loop far past its tail is.
#[test]
fn heavy_tailed_loops_are_judged_by_their_own_tail() {
    // Calls per request of the loop: Pareto(1, 1.8), by its quantile function.
    let pareto = |i: u64| (1.0 / (1.0 - (i % 997) as f64 / 998.0)).powf(1.0 / 1.8) as usize;
    let request = |seed: u64, loops: usize| {
        let mut t = TraceBuilder::new(seed, T0 + seed * SEC / 10);
        let root = t.server("gateway", "GET /report", None);
        for _ in 0..20 {
            t.db("gateway", "postgresql", "SELECT * FROM settings WHERE key = ?", root);
        }
        for _ in 0..loops {
            let call = t.client("gateway", "POST", root);
            let work = t.server("worker", "POST /row", Some(call));
            t.db("worker", "postgresql", "SELECT * FROM rows WHERE id = ?", work);
        }
        t.build()
    };
    let mut engine = engine();
    let mut out = Vec::new();
    for seed in 0..1_000 {
        engine.push(request(seed, pareto(seed * 7)), &mut out);
    }
    engine.advance_to(T0 + 200 * SEC, &mut out);
    assert!(out.is_empty(), "the heavy tail itself alerted: {out:#?}");

    // 150 loops: far above p99 (about 13) but where this edge's tail reaches now and then.
    engine.push(request(5_000, 150), &mut out);
    engine.advance_to(T0 + 700 * SEC, &mut out);
    assert!(out.is_empty(), "a value inside the learned tail alerted: {out:#?}");

    // 5,000 loops: beyond anything the tail explains; reported at its source.
    engine.push(request(6_000, 5_000), &mut out);
    engine.advance_to(T0 + 900 * SEC, &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].kind, AlertKind::FanoutAmplification);
    assert_eq!(out[0].edge.as_ref().unwrap().to.service, "worker");
}

/// A deploy that adds a call: one info alert naming the new edge, then silence.
#[test]
fn a_new_edge_is_an_info_note_once() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 300);
    let with_stock_check = |seed: u64| {
        let mut spans = product_trace(seed, T0 + seed * SEC / 10, 2);
        let catalog = spans.iter().find(|s| s.operation.as_str() == "GET /items/<int:pid>").unwrap().span_id;
        let mut extra = spans.iter().find(|s| s.remote.is_some()).unwrap().clone();
        extra.span_id = stormwatch_model::SpanId([0xee; 8]);
        extra.parent_span_id = Some(catalog);
        extra.remote = Some(stormwatch_model::Remote {
            kind: stormwatch_model::NodeKind::Database,
            name: Sym::new("sqlite"),
            operation: Sym::new("SELECT stock FROM inventory WHERE item = ?"),
        });
        spans.push(extra);
        spans
    };
    let mut out = Vec::new();
    for seed in 300..350 {
        engine.push(with_stock_check(seed), &mut out);
    }
    engine.flush(&mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].kind, AlertKind::NewEdge);
    assert_eq!(out[0].severity, Severity::Info);
    assert_eq!(out[0].edge.as_ref().unwrap().to.operation, "SELECT stock FROM inventory WHERE item = ?");
}

/// A new edge that carries real load in one request (a path the entry never used, 25 calls)
/// is a warning, not a note.
#[test]
fn a_new_edge_with_real_load_is_a_warning() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 300);
    let mut spans = product_trace(300, T0 + 30 * SEC, 2);
    let catalog = spans.iter().find(|s| s.operation.as_str() == "GET /items/<int:pid>").unwrap().span_id;
    let template = spans.iter().find(|s| s.remote.is_some()).unwrap().clone();
    for i in 0..25u8 {
        let mut extra = template.clone();
        extra.span_id = stormwatch_model::SpanId([0xe0, i, 0, 0, 0, 0, 0, 1]);
        extra.parent_span_id = Some(catalog);
        extra.remote = Some(stormwatch_model::Remote {
            kind: stormwatch_model::NodeKind::Database,
            name: Sym::new("sqlite"),
            operation: Sym::new("SELECT * FROM price_history WHERE item = ?"),
        });
        spans.push(extra);
    }
    let mut out = Vec::new();
    engine.push(spans, &mut out);
    engine.flush(&mut out);
    let new_edge = out.iter().find(|a| a.kind == AlertKind::NewEdge).expect("new edge reported");
    assert_eq!(new_edge.severity, Severity::Warning, "{new_edge:#?}");
    assert!(new_edge.explanation.contains("25 calls in this one: a real load"), "{}", new_edge.explanation);
}

#[test]
fn frozen_baselines_never_move() {
    use crate::tuning::Tuning;
    let mut engine = engine();
    learn_normal(&mut engine, 0, 100);
    let before = engine.store().clone();
    let lookups = *before.fanout().keys().find(|e| e.to.operation.as_str().contains("FROM users")).unwrap();
    let name = stormwatch_model::EdgeName::parse(&lookups.to_string()).unwrap();
    engine.set_tuning(Tuning { frozen_edges: [name].into(), ..Tuning::default() });
    learn_normal(&mut engine, 100, 100);
    assert_eq!(engine.store().fanout()[&lookups].samples(), before.fanout()[&lookups].samples(), "the frozen edge");
    let other = before.fanout().keys().find(|e| **e != lookups).unwrap();
    assert!(engine.store().fanout()[other].samples() > before.fanout()[other].samples(), "the others learn");

    engine.set_tuning(Tuning { freeze_all: true, ..Tuning::default() });
    let frozen_all = engine.store().clone();
    learn_normal(&mut engine, 200, 100);
    settle(&mut engine, 300, &mut Vec::new());
    for (edge, distribution) in engine.store().fanout() {
        assert_eq!(distribution.samples(), frozen_all.fanout()[edge].samples());
    }
    assert_eq!(engine.store().request_totals().len(), frozen_all.request_totals().len());
    assert_eq!(engine.store().window_samples(), frozen_all.window_samples());
}

#[test]
fn the_last_judged_windows_are_kept_for_the_api() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 2_000);
    settle(&mut engine, 2_000, &mut Vec::new());
    let recent: Vec<_> = engine.recent_windows().collect();
    assert_eq!(recent.len(), RECENT_WINDOWS);
    assert!(recent.windows(2).all(|w| w[0].0 < w[1].0), "oldest first");
    let (_, rates) = recent.last().unwrap();
    assert!(rates.iter().any(|(edge, rate)| edge.to.operation.as_str().contains("FROM users") && *rate > 1.0));
}

/// Poisoning: after 2,000 ordinary requests (author lookups 1-5, alert above 15), an attacker
/// sends three bursts of 300 fake "normal" requests, each just under the threshold the
/// previous burst would have taught (14, 41, 122 lookups), then ramps the loop slowly from 5
/// to 45 over an hour, interleaved with ordinary traffic. A 10x storm (50 lookups) still
/// alerts, and the judged p99 has not moved.
#[test]
fn bursts_and_a_ramp_of_fake_normal_traffic_do_not_teach_a_10x_storm() {
    let mut engine = engine();
    learn_normal(&mut engine, 0, 2_000);
    let lookups = *engine.store().fanout().keys().find(|e| e.to.operation.as_str().contains("FROM users")).unwrap();
    assert_eq!(engine.store().fanout()[&lookups].quantile(0.99), 5);

    let mut out = Vec::new();
    let mut seed = 2_000u64;
    let mut at = T0 + 200 * SEC;
    for loop_size in [14usize, 41, 122] {
        for _ in 0..300 {
            engine.push(product_trace(seed, at, loop_size), &mut out);
            seed += 1;
            at += SEC / 10;
        }
        at += 60 * SEC;
    }
    for step in 0..6_000u64 {
        let loop_size = if step % 2 == 0 { 5 + (40 * step / 6_000) as usize } else { 1 + (step % 5) as usize };
        engine.push(product_trace(seed, at, loop_size), &mut out);
        seed += 1;
        at += 600 * SEC / 1_000; // 6,000 requests in an hour
    }
    engine.advance_to(at + 3_600 * SEC, &mut out);
    let learned = &engine.store().fanout()[&lookups];
    assert!(learned.tail_held(), "the campaign pushed the learned tail: {:?}", learned.tail_ceiling());
    assert_eq!(learned.quantile(0.99), 5, "and what is judged did not move");

    let mut storm = Vec::new();
    let at = at + 3_600 * SEC;
    engine.push(product_trace(seed, at, 50), &mut storm);
    engine.advance_to(at + 20 * SEC, &mut storm);
    assert!(
        storm.iter().any(|a| a.kind == AlertKind::NPlusOne && a.observed == 50.0),
        "a 10x storm after the campaign went unnoticed: {storm:#?}"
    );
}

/// Names folded into `<overflow>` raise one `cardinality_flood` alert, with the traces that
/// carried them as exemplars; more folding within the throttle window is counted, not
/// re-alerted; clients past their limit are counted but are no flood.
#[test]
fn a_flood_of_invented_names_is_one_alert() {
    use stormwatch_model::{Dimension, DimensionState, Sym, OVERFLOW};
    let state = |dimension: Dimension, overflowed: u64| {
        Dimension::ALL
            .map(|d| DimensionState {
                dimension: d,
                limit: 10,
                byte_limit: 1 << 20,
                distinct: 10,
                bytes: 400,
                overflowed: if d == dimension { overflowed } else { 0 },
                truncated: 0,
                escaped: 0,
            })
            .to_vec()
    };
    let mut engine = engine();
    learn_normal(&mut engine, 0, 50);
    let mut out = Vec::new();
    engine.note_cardinality(&state(Dimension::Operation, 0), &mut out);
    assert!(out.is_empty());

    let mut flooded = product_trace(100, T0 + 10 * SEC, 2);
    flooded[0].operation = Sym::new(OVERFLOW);
    let flooded_id = flooded[0].trace_id;
    engine.push(flooded, &mut out);
    settle(&mut engine, 100, &mut out);
    engine.note_cardinality(&state(Dimension::Client, 500), &mut out);
    assert!(out.is_empty(), "clients past their limit are no flood: {out:#?}");

    engine.note_cardinality(&state(Dimension::Operation, 40), &mut out);
    assert_eq!(out.len(), 1, "{out:#?}");
    let alert = &out[0];
    assert_eq!(alert.kind, AlertKind::CardinalityFlood);
    assert_eq!(alert.exemplar_trace_ids, vec![flooded_id.to_string()]);
    assert_eq!(alert.observed, 40.0);
    assert!(alert.explanation.contains("40 new operations past its limit of 10 names"), "{}", alert.explanation);
    assert_eq!(alert.contributors[0].name, "names operations");
    // The repository's schema, read where the tests run (it is not part of this crate).
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/alert.v1.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let kinds = schema["properties"]["kind"]["enum"].as_array().unwrap();
    assert!(kinds.iter().any(|k| k == "cardinality_flood"), "the schema names the kind");

    // More folding inside the throttle window: no second alert.
    engine.note_cardinality(&state(Dimension::Operation, 90), &mut out);
    engine.note_cardinality(&state(Dimension::Operation, 90), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(engine.stats().findings[AlertKind::CardinalityFlood.index()], 2);
}

/// Timestamps a hostile or broken exporter sends: 1970, 2200, and the ends of the range.
const EXTREME_TIMES: [u64; 5] = [0, 1, T0, 7_258_118_400 * SEC, u64::MAX];

proptest::proptest! {
    /// Whatever shape a trace has — parents pointing anywhere (cycles, self-parents, missing
    /// spans), duplicate span ids, no root, timestamps in 1970, 2200 or at the ends of the
    /// range, ends before starts — the engine assembles, judges and learns it without panicking.
    #[test]
    fn any_trace_shape_passes_the_engine(
        spans in 1usize..40,
        parents in proptest::collection::vec((0usize..64, 0usize..64), 0..20),
        duplicates in proptest::collection::vec((0usize..64, 0usize..64), 0..5),
        times in proptest::collection::vec((0usize..64, 0usize..5, 0usize..5), 0..10),
        drop_root in proptest::bool::ANY,
    ) {
        let mut t = TraceBuilder::new(7, T0);
        let root = t.server("gateway", "GET /", None);
        let mut ids = vec![root];
        for i in 1..spans {
            let parent = ids[i / 2];
            ids.push(match i % 3 {
                0 => t.db("gateway", "postgresql", "SELECT 1", parent),
                1 => t.client("gateway", "GET", parent),
                _ => t.server("catalog", "GET /items", Some(parent)),
            });
        }
        let mut trace: Vec<Span> = t.build();
        let n = trace.len();
        for (child, parent) in parents {
            let parent = trace[parent % n].span_id;
            trace[child % n].parent_span_id = Some(parent);
        }
        for (a, b) in duplicates {
            trace[a % n].span_id = trace[b % n].span_id;
        }
        for (i, start, end) in times {
            trace[i % n].start_unix_nano = EXTREME_TIMES[start];
            trace[i % n].end_unix_nano = EXTREME_TIMES[end];
        }
        if drop_root && n > 1 {
            trace.remove(0);
        }
        let config = EngineConfig {
            detect: DetectConfig { learning_min_samples: 1, ..DetectConfig::default() },
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(config, BaselineStore::new(1_000), || 42);
        let mut out = Vec::new();
        // Twice, so the second copy is judged against what the first taught.
        engine.push(trace.clone(), &mut out);
        engine.advance_to(u64::MAX, &mut out);
        engine.push(trace, &mut out);
        engine.flush(&mut out);
    }
}

/// One trace of 1,000,000 spans (a runaway loop): assembled, judged and learned, once.
#[test]
fn a_million_span_trace_passes_the_engine() {
    let mut t = TraceBuilder::new(9, T0);
    let root = t.server("gateway", "GET /export", None);
    for _ in 0..999_999 {
        t.db("gateway", "postgresql", "SELECT * FROM rows WHERE id = ?", root);
    }
    let trace = t.build();
    assert_eq!(trace.len(), 1_000_000);
    let mut engine = engine();
    let mut out = Vec::new();
    engine.push(trace, &mut out);
    engine.flush(&mut out);
    assert_eq!(engine.stats().traces_checked, 1);
    let lookups = engine.store().fanout().values().next().expect("learned");
    assert_eq!(lookups.max(), 999_999);
}

/// The dashboard's edges: the busiest and the most anomalous of the last judged window, at
/// most `2 k`, each with its load, calls per entry request and score against the p99.
#[test]
fn edge_gauges_are_the_top_edges_by_load_and_by_anomaly() {
    let mut engine = engine();
    assert!(engine.edge_gauges(3).is_empty(), "no window judged yet");
    learn_normal(&mut engine, 0, 2_000);
    settle(&mut engine, 2_000, &mut Vec::new());
    let gauges = engine.edge_gauges(1);
    assert!(!gauges.is_empty() && gauges.len() <= 2, "{gauges:#?}");
    let all = engine.edge_gauges(100);
    let busiest = all.iter().map(|g| g.calls_per_second).fold(0.0, f64::max);
    assert_eq!(gauges[0].calls_per_second, busiest, "busiest first");
    let lookups = all.iter().find(|g| g.edge.to.operation.as_str().contains("FROM users")).expect("the lookups");
    assert!(lookups.calls_per_entry > 1.0 && lookups.p99_per_entry > 0.0, "{lookups:?}");
    assert!((lookups.score - lookups.calls_per_entry / lookups.p99_per_entry).abs() < 1e-9);
    assert!(engine.last_window_end() > T0);
}

/// Sampling weights window counts only: the same traces, each standing for 10 under
/// sampling, make the same per-trace alerts (a loop of 400 is a loop of 400) and teach the
/// same per-trace baselines.
#[test]
fn per_trace_judgement_is_the_same_under_sampling() {
    let run = |adjusted_count: f32| {
        let mut engine = engine();
        let mut out = Vec::new();
        let weighted = |mut spans: Vec<Span>| {
            spans.iter_mut().for_each(|span| span.adjusted_count = adjusted_count);
            spans
        };
        for seed in 0..400 {
            engine.push(weighted(product_trace(seed, T0 + seed * SEC / 10, 1 + (seed % 5) as usize)), &mut out);
        }
        engine.push(weighted(product_trace(1_000, T0 + 401 * SEC / 10, 400)), &mut out);
        settle(&mut engine, 1_000, &mut out);
        let per_trace: Vec<(AlertKind, f64, f64)> = out
            .iter()
            .filter(|a| {
                matches!(a.kind, AlertKind::NPlusOne | AlertKind::FanoutAmplification | AlertKind::RequestAmplification)
            })
            .map(|a| (a.kind, a.observed, a.threshold))
            .collect();
        (per_trace, engine.store().fanout().values().map(|d| d.samples()).sum::<u64>(), engine.stats().clone())
    };
    let (unsampled, samples, stats) = run(1.0);
    let (sampled, sampled_samples, sampled_stats) = run(10.0);
    assert_eq!(unsampled, vec![(AlertKind::NPlusOne, 400.0, 15.0)]);
    assert_eq!(sampled, unsampled);
    assert_eq!(sampled_samples, samples);
    assert_eq!((stats.traces_sampled, sampled_stats.traces_sampled), (0, 401));
    assert_eq!((stats.traces_represented, sampled_stats.traces_represented), (401, 4010));
}

//! Window detectors on small hand-built windows.

use stormwatch_assemble::{CompletedTrace, Completion};
use stormwatch_baseline::{BaselineStore, Distribution, WindowMetric};
use stormwatch_model::builder::TraceBuilder;
use stormwatch_model::{AlertKind, Span};

use super::*;
use crate::features::{extract, TraceFeatures};

const SEC: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * SEC;

#[derive(Clone, Copy)]
enum Request {
    /// gateway `GET /product` -> catalog, a cache lookup (a miss every tenth request: a read,
    /// written back to the cache).
    Product { miss: bool },
    /// gateway `GET /search` -> catalog, two database queries. From attacker clients when `shifted`.
    Search { shifted: bool },
    /// gateway -> reviews, `attempts` tries (all but the last fail), each reading the database.
    Reviews { attempts: usize },
    /// Product with a deploy's extra database call beside the cache lookup.
    ProductWithStockCheck,
}

fn trace(seed: u64, at: u64, request: Request) -> TraceFeatures {
    let mut t = TraceBuilder::new(seed, at);
    let spans: Vec<Span> = match request {
        Request::Product { miss } => {
            let root = t.server("gateway", "GET /product", None);
            t.client_last(&format!("10.0.{}.{}", seed % 200, seed % 250 + 1));
            let call = t.client("gateway", "GET", root);
            let items = t.server("catalog", "GET /items", Some(call));
            t.cache("catalog", "redis", items);
            if miss {
                t.db("catalog", "postgresql", "SELECT * FROM items WHERE id = ?", items);
                // Cache-aside: the page read is written back.
                t.cache_command("catalog", "redis", "SET", items);
            }
            t.build()
        }
        Request::Search { shifted } => {
            let root = t.server("gateway", "GET /search", None);
            let client = if shifted { format!("198.51.{}.{}", seed % 200, seed % 250 + 1) } else { "10.0.9.9".into() };
            t.client_last(&client);
            if shifted {
                // Two accounts behind the whole campaign.
                t.user_last(&format!("scraper-{}", seed % 2));
            }
            let call = t.client("gateway", "GET", root);
            let search = t.server("catalog", "GET /search", Some(call));
            t.bytes_last(20_000);
            t.db("catalog", "postgresql", "SELECT id FROM items WHERE name ILIKE ?", search);
            t.db("catalog", "postgresql", "SELECT stock FROM inventory WHERE id IN (?)", search);
            t.build()
        }
        Request::Reviews { attempts } => {
            let root = t.server("gateway", "GET /reviews", None);
            t.client_last("10.0.1.1");
            for attempt in 0..attempts {
                let call = t.client("gateway", "GET", root);
                if attempt > 0 {
                    t.retry_last();
                }
                let reviews = t.server("reviews", "GET /reviews", Some(call));
                if attempt + 1 < attempts {
                    t.fail_last();
                }
                t.db("reviews", "postgresql", "SELECT * FROM reviews WHERE item = ?", reviews);
            }
            t.build()
        }
        Request::ProductWithStockCheck => {
            let root = t.server("gateway", "GET /product", None);
            t.client_last("10.0.0.1");
            let call = t.client("gateway", "GET", root);
            let items = t.server("catalog", "GET /items", Some(call));
            t.cache("catalog", "redis", items);
            t.db("catalog", "postgresql", "SELECT stock FROM inventory WHERE item = ?", items);
            t.build()
        }
    };
    let trace_id = spans[0].trace_id;
    extract(&CompletedTrace { trace_id, spans, completion: Completion::Idle, has_root: true })
}

/// One 10 s window of `count` requests made by `make(i)`.
fn window(index: u64, count: u64, make: impl Fn(u64) -> Request, flagged: impl Fn(u64) -> bool) -> Window {
    let mut windows = Windows::new(WindowConfig::default());
    for i in 0..count {
        let at = T0 + index * 10 * SEC + i * (10 * SEC / count.max(1) - 1_000_000);
        windows.add(&trace(index * 10_000 + i, at, make(i)), flagged(i));
    }
    let mut closed = windows.close_all();
    assert_eq!(closed.len(), 1, "requests must fall in one window");
    closed.remove(0)
}

/// The usual mix: mostly products (a miss in ten), a search in twenty-five, some reviews.
fn usual(i: u64) -> Request {
    match i % 25 {
        0 => Request::Search { shifted: false },
        1..=4 => Request::Reviews { attempts: 1 },
        _ => Request::Product { miss: i % 10 == 3 },
    }
}

fn trained() -> BaselineStore {
    let mut store = BaselineStore::new(10_000);
    for index in 0..40 {
        let findings = judge_window(
            &window(index, 100, usual, |_| false),
            &mut store,
            &DetectConfig::default(),
            &WindowConfig::default(),
        );
        assert!(findings.is_empty(), "training window {index} alerted: {findings:#?}");
    }
    store
}

fn judge(store: &mut BaselineStore, window: &Window) -> Vec<Finding> {
    judge_window(window, store, &DetectConfig::default(), &WindowConfig::default())
}

#[test]
fn a_flash_crowd_with_the_usual_mix_is_quiet() {
    let mut store = trained();
    assert!(judge(&mut store, &window(50, 300, usual, |_| false)).is_empty());
}

#[test]
fn a_rare_class_surging_is_aggregate_amplification_with_its_contributors() {
    let mut store = trained();
    // Searches rise from 4% to 40% of traffic, from a population of other clients.
    let surge = window(50, 100, |i| if i % 5 < 2 { Request::Search { shifted: true } } else { usual(i) }, |_| false);
    let findings = judge(&mut store, &surge);
    assert!(!findings.is_empty());
    assert!(findings.iter().all(|f| f.kind == AlertKind::AggregateAmplification), "{findings:#?}");
    let first = &findings[0];
    assert_eq!(first.edge.unwrap().from.operation.as_str(), "GET /search");
    assert_eq!(first.entry.unwrap().operation.as_str(), "GET /search");
    assert!(first.contributors[0].name.starts_with("entry gateway `GET /search"), "{:?}", first.contributors);
    assert!(
        first.contributors.iter().any(|c| c.name == "clients 198.51.0.0/16" && c.share > 0.5),
        "{:?}",
        first.contributors
    );
    assert!(first.contributors.iter().any(|c| c.name.starts_with("user scraper-") && c.share > 0.2));
    assert_eq!(first.exemplars.len(), MAX_EXEMPLARS);
    assert!(first.observed > first.threshold && first.threshold > first.expected);
    // The responses the campaign pulled, where the spans report them.
    let search_calls = findings
        .iter()
        .find(|f| f.edge.unwrap().to.service.as_str() == "catalog")
        .expect("gateway -> catalog `GET /search` amplified");
    assert!(search_calls.explanation.contains("(800.0 kB of responses)"), "{}", search_calls.explanation);
}

#[test]
fn a_retry_storm_is_one_alert_not_a_cascade() {
    let mut store = trained();
    let storm = window(50, 100, |i| if i % 25 < 5 { Request::Reviews { attempts: 4 } } else { usual(i) }, |_| false);
    let findings = judge(&mut store, &storm);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].kind, AlertKind::RetryStorm);
    assert_eq!(findings[0].edge.unwrap().to.service.as_str(), "reviews");
    assert_eq!(findings[0].unit, "retry_ratio");
    assert!(findings[0].explanation.contains("retried"), "{}", findings[0].explanation);
}

#[test]
fn cache_bypass_fires_but_a_new_call_beside_the_cache_does_not() {
    let mut store = trained();
    let bypass = window(
        50,
        100,
        |i| match usual(i) {
            Request::Product { .. } => Request::Product { miss: true },
            other => other,
        },
        |_| false,
    );
    let findings = judge(&mut store, &bypass);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].kind, AlertKind::CacheBypass);
    assert_eq!(findings[0].edge.unwrap().to.service.as_str(), "redis");
    assert!(findings[0].observed > 0.9);

    let mut store = trained();
    let deploy = window(
        50,
        100,
        |i| match usual(i) {
            Request::Product { .. } => Request::ProductWithStockCheck,
            other => other,
        },
        |_| false,
    );
    assert!(judge(&mut store, &deploy).is_empty());
}

#[test]
fn work_that_per_trace_detectors_reported_is_not_window_evidence() {
    let mut store = trained();
    let surge = |i| if i % 5 < 2 { Request::Search { shifted: true } } else { usual(i) };
    let flagged = window(50, 100, surge, |i| i % 5 < 2);
    assert!(judge(&mut store, &flagged).is_empty());
}

#[test]
fn quiet_windows_are_ignored_and_anomalous_ones_are_not_learned() {
    let mut store = trained();
    let edge_samples = |store: &BaselineStore| {
        store
            .windows()
            .iter()
            .filter(|((metric, _), _)| *metric == WindowMetric::WorkPerEntry)
            .map(|(_, d)| d.samples())
            .sum::<u64>()
    };
    // Too few entry requests: neither judged nor learned.
    let before = edge_samples(&store);
    let sparse = window(50, 5, |_| Request::Search { shifted: true }, |_| false);
    assert!(judge(&mut store, &sparse).is_empty());
    assert_eq!(edge_samples(&store), before);
    // An attack window: the anomalous edges keep their baseline.
    let search_edge = |store: &BaselineStore| {
        store
            .windows()
            .iter()
            .find(|((metric, edge), _)| {
                *metric == WindowMetric::WorkPerEntry
                    && edge.from.operation.as_str() == "GET /search"
                    && edge.to.kind == stormwatch_model::NodeKind::Database
            })
            .map(|(_, d)| (d.samples(), d.quantile(0.99)))
            .unwrap()
    };
    let learned = search_edge(&store);
    for index in 50..60 {
        let surge =
            window(index, 100, |i| if i % 5 < 2 { Request::Search { shifted: true } } else { usual(i) }, |_| false);
        assert!(!judge(&mut store, &surge).is_empty(), "window {index}: the attack must not become normal");
    }
    assert_eq!(search_edge(&store), learned);
}

#[test]
fn space_saving_keeps_the_heavy_hitters() {
    let mut sketch = SpaceSaving::new(4);
    for i in 0..1_000u64 {
        sketch.add(&(i % 50), 1); // background
        if i % 2 == 0 {
            sketch.add(&999, 3); // a heavy hitter
        }
    }
    assert_eq!(sketch.top()[0].0, 999);
    assert!(sketch.top().len() <= 4);
}

#[test]
fn client_populations() {
    assert_eq!(client_population("198.51.100.7"), "198.51.0.0/16");
    assert_eq!(client_population("2001:db8:1:2:3::9"), "2001:db8:1:2::/64");
    assert_eq!(client_population("not-an-ip"), "not-an-ip");
}

/// Poisoning: a slow ramp (+5% an hour, 10 s windows, 24 hours) is learned only as far as
/// the ramp went, so a 10x storm at the end of the day still alerts; and the ramp never
/// teaches the baseline more than it saw.
#[test]
fn a_slow_ramp_cannot_teach_a_10x_storm_within_a_day() {
    let rules = window_judging(&DetectConfig::default(), &WindowConfig::default());
    let base = 200.0; // 0.2 calls per entry request, in thousandths
    let mut distribution = Distribution::default();
    // A day of normal traffic with some noise, then a day of ramp.
    let mut noise = stormwatch_model::stable_hash(&[b"seed"]);
    let mut jitter = || {
        noise = noise.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        0.9 + (noise >> 40) as f64 / (1u64 << 24) as f64 * 0.2
    };
    for _ in 0..8_640 {
        distribution.observe((base * jitter()) as u64, 0);
    }
    let mut alerted_during_ramp = 0;
    for step in 0..8_640u64 {
        let hours = step as f64 / 360.0;
        let value = (base * 1.05f64.powf(hours) * jitter()) as u64;
        match crate::detectors::judge(Some(&distribution), value, &rules) {
            Some(_) => alerted_during_ramp += 1, // judged anomalous: not learned
            None => distribution.observe(value, step),
        }
    }
    let ramp_end = base * 1.05f64.powf(24.0);
    assert!(ramp_end < 3.3 * base);
    // What the ramp taught stays below the storm: 10x the original rate alerts.
    assert!(
        crate::detectors::judge(Some(&distribution), (10.0 * base) as u64, &rules).is_some(),
        "a 10x storm went unnoticed"
    );
    // And nothing beyond the ramp's own range was learned.
    assert!(distribution.max() as f64 <= ramp_end * 1.1 + 1.0, "learned {} > ramp end {ramp_end}", distribution.max());
    let _ = alerted_during_ramp;
}

#[test]
fn per_trace_baselines_resist_the_same_ramp() {
    let config = DetectConfig::default();
    let mut distribution = Distribution::default();
    for i in 0..2_000u64 {
        distribution.observe(3 + i % 3, 0); // a loop of 3-5
    }
    // Requests whose loop grows 5% an hour, 60 requests an hour, for a day.
    for step in 0..1_440u64 {
        let value = (4.0 * 1.05f64.powf(step as f64 / 60.0)).round() as u64;
        if crate::detectors::judge(Some(&distribution), value, &config).is_none() {
            distribution.observe(value, step);
        }
    }
    assert!(crate::detectors::judge(Some(&distribution), 40, &config).is_some(), "10x the usual loop must still alert");
}

/// A mix that is normal at 09:00 every day (a morning batch of searches) alarms on its first
/// days, then is expected at that hour, and only at that hour; a storm beyond the hour's level
/// still alarms.
#[test]
fn a_daily_rhythm_is_learned_per_hour_of_day() {
    let mut store = trained();
    // Windows every 20 minutes (index counts 10 s steps from T0, which is 08:00 UTC).
    let hour_of = |index: u64| ((T0 / SEC + index * 10) / 3_600 % 24) as u32;
    let morning = |i: u64| if i.is_multiple_of(5) { Request::Search { shifted: false } } else { usual(i) };
    let searches_alerted = |findings: &[Finding]| {
        findings.iter().any(|f| {
            f.kind == AlertKind::AggregateAmplification && f.edge.unwrap().from.operation.as_str() == "GET /search"
        })
    };
    let mut morning_alerts_by_day = [0usize; 3];
    for step in 3..(3 + 72 * 3) {
        let index = step * 120;
        let day = ((step - 3) / 72) as usize;
        let findings = if hour_of(index) == 9 {
            let findings = judge(&mut store, &window(index, 200, morning, |_| false));
            morning_alerts_by_day[day] += usize::from(searches_alerted(&findings));
            findings
        } else {
            judge(&mut store, &window(index, 200, usual, |_| false))
        };
        assert!(hour_of(index) == 9 || findings.is_empty(), "{:02}h: {findings:#?}", hour_of(index));
    }
    // Three windows at 09:00 each day: new on day 0 and 1; from the second window of day 2 on
    // (once two whole days are behind the hour) it is the usual level at 09:00.
    assert_eq!(morning_alerts_by_day, [3, 3, 1], "morning windows that alarmed, per day");

    // Day 3: at 09:00 the morning mix is quiet.
    let day_three = (3 + 72 * 3) * 120;
    let nine = (0..).map(|k| day_three + k * 120).find(|index| hour_of(*index) == 9).unwrap();
    assert!(judge(&mut store, &window(nine, 200, morning, |_| false)).is_empty());
    // Every request a search, five times the morning level: still a storm at 09:00.
    let storm = judge(&mut store, &window(nine + 120, 200, |_| Request::Search { shifted: false }, |_| false));
    let finding = storm.iter().find(|f| f.kind == AlertKind::AggregateAmplification).expect("storm at 09:00");
    assert!(finding.explanation.contains("at this hour of day"), "{}", finding.explanation);
    // The morning mix at 15:00 is not what that hour does.
    let three_pm = (0..).map(|k| nine + k * 120).find(|index| hour_of(*index) == 15).unwrap();
    assert!(searches_alerted(&judge(&mut store, &window(three_pm, 200, morning, |_| false))));
}

/// The same window seen by two engines (each owning half the traces) and merged judges like
/// the whole: the same findings, numbers and contributors (the first step of merging windows
/// across engines of a consumer group).
#[test]
fn merged_partial_windows_judge_like_the_whole() {
    let surge = |i: u64| if i % 5 < 2 { Request::Search { shifted: true } } else { usual(i) };
    let part = |keep: fn(u64) -> bool| {
        let mut windows = Windows::new(WindowConfig::default());
        for i in (0..100).filter(|i| keep(*i)) {
            let at = T0 + 50 * 10 * SEC + i * (10 * SEC / 100 - 1_000_000);
            windows.add(&trace(50 * 10_000 + i, at, surge(i)), false);
        }
        windows.close_all().remove(0)
    };
    let (mut merged, other) = (part(|i| i % 2 == 0), part(|i| i % 2 == 1));
    // Half the traffic each.
    assert_eq!((merged.entry_requests, other.entry_requests), (50, 50));
    merged.merge(other, WindowConfig::default().top_k);
    let whole = window(50, 100, surge, |_| false);
    assert_eq!(merged.entry_requests, whole.entry_requests);
    assert_eq!(merged.rates(), whole.rates());

    let summary = |findings: Vec<Finding>| -> Vec<(AlertKind, String, f64, Vec<String>)> {
        findings
            .into_iter()
            .map(|f| {
                let contributors = f.contributors.iter().map(|c| format!("{} {}", c.name, c.share)).collect();
                (f.kind, f.edge.map(|e| e.to_string()).unwrap_or_default(), f.observed, contributors)
            })
            .collect()
    };
    let from_merged = summary(judge(&mut trained(), &merged));
    assert!(!from_merged.is_empty(), "the merged window shows the surge");
    assert_eq!(from_merged, summary(judge(&mut trained(), &whole)));
}

/// Probability sampling: one trace in seven kept, each standing for seven (its `tracestate`'s
/// adjusted count), counts and judges like the whole traffic; a sender cannot make one trace
/// weigh more than `max_adjusted_count`.
#[test]
fn a_sampled_window_counts_and_judges_like_the_whole() {
    let surge = |i: u64| if i % 5 < 2 { Request::Search { shifted: true } } else { usual(i) };
    let whole = window(50, 700, surge, |_| false);
    let mut windows = Windows::new(WindowConfig::default());
    for i in (0..700).filter(|i| i % 7 == 0) {
        let at = T0 + 50 * 10 * SEC + i * (10 * SEC / 700 - 1_000_000);
        let mut sampled = trace(50 * 10_000 + i, at, surge(i));
        sampled.adjusted_count = 7.0;
        windows.add(&sampled, false);
    }
    let sampled = windows.close_all().remove(0);
    assert_eq!(sampled.entry_requests, whole.entry_requests);
    assert_eq!(sampled.rates(), whole.rates());
    let summary = |findings: Vec<Finding>| -> Vec<(AlertKind, String, f64)> {
        findings.into_iter().map(|f| (f.kind, f.edge.map(|e| e.to_string()).unwrap_or_default(), f.observed)).collect()
    };
    let from_sampled = summary(judge(&mut trained(), &sampled));
    assert!(!from_sampled.is_empty(), "the sampled window shows the surge");
    assert_eq!(from_sampled, summary(judge(&mut trained(), &whole)));

    // A trace claiming to stand for a billion counts as `max_adjusted_count`.
    let mut inflated = trace(1, T0, usual(1));
    inflated.adjusted_count = 1e9;
    let config = WindowConfig { max_adjusted_count: 50, ..WindowConfig::default() };
    let mut windows = Windows::new(config);
    windows.add(&inflated, false);
    assert_eq!(windows.close_all()[0].entry_requests, 50);
}

/// A fractional adjusted count is rounded up or down by trace so the total has no bias.
#[test]
fn fractional_weights_add_up_without_bias() {
    let mut windows = Windows::new(WindowConfig::default());
    let total: u64 = (0..3_000)
        .map(|i| {
            let mut features = trace(i, T0, usual(i));
            features.adjusted_count = 10.0 / 3.0;
            windows.add(&features, false)
        })
        .sum();
    assert_eq!(windows.close_all()[0].entry_requests, total, "the window counts what add says");
    // 3,000 traces at 3.33 each stand for about 10,000.
    assert!((9_700..=10_300).contains(&total), "{total}");
    // A count that is not a number stands for one trace.
    let mut odd = trace(1, T0, usual(1));
    odd.adjusted_count = f32::NAN;
    assert_eq!(Windows::new(WindowConfig::default()).add(&odd, false), 1);
}

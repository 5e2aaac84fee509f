use prost::Message;
use stormwatch_baseline::BaselineStore;
use stormwatch_loadgen::{Generator, Scenario};
use stormwatch_model::{Alert, AlertKind};

use super::*;
use crate::features::tests::product_trace;
use crate::{Engine, EngineConfig};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SEC;
const TIMEOUT: u64 = 30 * SEC;

fn sharing_engine() -> Engine {
    Engine::new(EngineConfig { share_windows: true, ..EngineConfig::default() }, BaselineStore::new(10_000), || 42)
}

/// One closed window of `requests` product requests, as an engine sharing its windows ships it.
fn one_window(requests: u64) -> Window {
    let mut engine = sharing_engine();
    let mut alerts = Vec::new();
    for seed in 0..requests {
        engine.push(product_trace(seed, T0 + seed * SEC / 100, 2), &mut alerts);
    }
    engine.advance_to(T0 + 60 * SEC, &mut alerts);
    assert!(alerts.is_empty(), "a sharing engine judges no window: {alerts:#?}");
    let mut windows = engine.take_closed_windows();
    assert_eq!(windows.len(), 1);
    windows.pop().unwrap()
}

fn partials(sender: &str, partitions: &[i32], closed_through: u64, windows: Vec<Window>) -> Partials {
    Partials { windows, ..Partials::new(sender, partitions.to_vec(), 2, closed_through) }
}

#[test]
fn a_window_is_judged_once_every_partition_has_closed_it() {
    let window = one_window(30);
    let end = window.end;
    let mut merger = WindowMerger::new(TIMEOUT, 16);
    merger.offer(partials("a", &[0], end, vec![window.clone()]), 0);
    assert!(merger.due(1).is_empty(), "partition 1 is not accounted for");
    merger.offer(partials("b", &[1], end - 1, Vec::new()), 2);
    assert!(merger.due(3).is_empty(), "b has not closed the window yet");
    // A redelivered share from the same engine is not counted twice.
    merger.offer(partials("a", &[0], end, vec![window.clone()]), 4);
    assert_eq!(merger.stats().duplicate_partials, 1);
    merger.offer(partials("b", &[1], end, vec![window.clone()]), 5);
    let due = merger.due(6);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].entry_requests, 60, "the shares of a and b, once each");
    assert_eq!(merger.merged_through(), end);
    // A share arriving after the judgement is late.
    merger.offer(partials("c", &[1], end, vec![window]), 7);
    assert!(merger.due(8).is_empty());
    assert_eq!(merger.stats().late_partials, 1);
    assert_eq!((merger.stats().windows_merged, merger.stats().windows_timed_out), (1, 0));
}

#[test]
fn an_idle_engine_holds_nothing_back_and_an_unclaimed_partition_only_until_the_timeout() {
    let window = one_window(25);
    let end = window.end;
    let mut merger = WindowMerger::new(TIMEOUT, 16);
    merger.offer(partials("a", &[0], end, vec![window.clone()]), 0);
    merger.offer(Partials { idle: true, ..partials("b", &[1], 0, Vec::new()) }, 0);
    assert_eq!(merger.due(1).len(), 1, "b has nothing in flight");

    // The partition's engine died and nobody took it over yet: wait, then judge what is there.
    let mut merger = WindowMerger::new(TIMEOUT, 16);
    merger.offer(partials("a", &[0], end, vec![window]), 0);
    assert!(merger.due(TIMEOUT - 1).is_empty());
    assert_eq!(merger.due(TIMEOUT).len(), 1);
    assert_eq!(merger.stats().windows_timed_out, 1);
}

#[test]
fn a_partition_counts_for_the_engine_that_claimed_it_last() {
    let window = one_window(25);
    let end = window.end;
    let mut merger = WindowMerger::new(TIMEOUT, 16);
    merger.offer(partials("a", &[0, 1], end, vec![window]), 0);
    // After a rebalance b owns partition 1 and is behind: the window waits for b.
    merger.offer(partials("b", &[1], end - SEC, Vec::new()), 1);
    assert!(merger.due(2).is_empty());
    merger.offer(partials("b", &[1], end, Vec::new()), 3);
    assert_eq!(merger.due(4).len(), 1);
}

#[test]
fn partials_round_trip_and_other_versions_are_refused_by_name() {
    let window = one_window(20);
    let message = partials("engine-0", &[0, 1], window.end, vec![window.clone()]);
    let back = Partials::decode(&message.encode()).unwrap();
    assert_eq!(back.sender, "engine-0");
    assert_eq!(back.windows.len(), 1);
    assert_eq!(serde_json::to_value(&back.windows[0]).unwrap(), serde_json::to_value(&window).unwrap());

    let mut other = serde_json::to_value(&message).unwrap();
    other["version"] = 2.into();
    let error = Partials::decode(other.to_string().as_bytes()).unwrap_err().to_string();
    assert!(error.contains("version 2") && error.contains("version 1"), "{error}");
    let error = Partials::decode(b"{\"format\":\"x\",\"version\":1}").unwrap_err();
    assert!(matches!(&error, PartialsError::Format(format) if format == "x"), "{error}");
    assert!(Partials::decode(b"not json").unwrap_err().to_string().contains(PARTIALS_FORMAT));
}

const WINDOW_KINDS: [AlertKind; 4] =
    [AlertKind::AggregateAmplification, AlertKind::RetryStorm, AlertKind::CacheBypass, AlertKind::CorrelatedStorm];

/// Window-level alerts as (kind, edge, window start): what must not depend on how many engines
/// shared the traffic.
fn window_alerts(alerts: &[Alert]) -> Vec<(String, String, String)> {
    let mut found: Vec<(String, String, String)> = alerts
        .iter()
        .filter(|a| WINDOW_KINDS.contains(&a.kind))
        .map(|a| {
            let edge = a.edge.as_ref().map(|e| format!("{e:?}")).unwrap_or_default();
            (a.kind.as_str().to_string(), edge, a.window.start.clone())
        })
        .collect();
    found.sort();
    found
}

/// The shop scenario through one engine, and through three engines that each see the traces
/// of one "partition" (by trace id) and ship their windows to a merger: the window-level
/// alerts are the same, and a third of the traffic alone does not show them all.
#[test]
fn three_engines_sharing_windows_alert_like_one() {
    let scenario = Scenario::parse(stormwatch_loadgen::shipped::SHOP).expect("scenario");
    let mut config = EngineConfig::default();
    config.detect.learning_min_samples = scenario.eval.learning_min_samples;
    config.window.window_nanos = scenario.eval.window.as_nanos() as u64;
    let new_engine = |share_windows: bool| {
        Engine::new(EngineConfig { share_windows, ..config.clone() }, BaselineStore::new(100_000), || 42)
    };
    let mut single = new_engine(false);
    let mut alone = new_engine(false);
    let mut group: Vec<Engine> = (0..3).map(|_| new_engine(true)).collect();
    let mut merger = WindowMerger::new(u64::MAX, config.window.top_k);
    let (mut single_alerts, mut alone_alerts, mut group_alerts) = (Vec::new(), Vec::new(), Vec::new());
    let mut buffer = Vec::new();
    let ship = |engine: &mut Engine, partition: usize, merger: &mut WindowMerger| {
        let message = Partials {
            windows: engine.take_closed_windows(),
            ..Partials::new(&format!("engine-{partition}"), vec![partition as i32], 3, engine.windows_closed_through())
        };
        // Through the wire format, as on the windows topic.
        merger.offer(Partials::decode(&message.encode()).unwrap(), 0);
    };
    for trace in Generator::new(&scenario) {
        buffer.clear();
        trace.request.encode(&mut buffer).unwrap();
        let spans = stormwatch_otlp::decode_protobuf(&buffer).unwrap().spans;
        let partition = (spans[0].trace_id.0[15] % 3) as usize;
        single.push(spans.clone(), &mut single_alerts);
        if partition == 0 {
            alone.push(spans.clone(), &mut alone_alerts);
        }
        group[partition].push(spans, &mut group_alerts);
        ship(&mut group[partition], partition, &mut merger);
        let (merging, _) = group.split_first_mut().unwrap();
        merging.judge_merged(merger.due(0), &mut group_alerts);
    }
    single.flush(&mut single_alerts);
    alone.flush(&mut alone_alerts);
    for (partition, engine) in group.iter_mut().enumerate() {
        engine.flush(&mut group_alerts);
        ship(engine, partition, &mut merger);
    }
    let (merging, _) = group.split_first_mut().unwrap();
    merging.judge_merged(merger.due(0), &mut group_alerts);
    merging.flush(&mut group_alerts);

    let expected = window_alerts(&single_alerts);
    let kinds: std::collections::BTreeSet<&str> = expected.iter().map(|a| a.0.as_str()).collect();
    assert!(
        kinds.contains("aggregate_amplification") && kinds.contains("retry_storm") && kinds.contains("cache_bypass"),
        "the shop's window-level attacks: {expected:#?}"
    );
    assert_eq!(window_alerts(&group_alerts), expected);
    assert_eq!(merger.stats().late_partials + merger.stats().duplicate_partials, 0);
    assert_ne!(window_alerts(&alone_alerts), expected, "a third of the traffic sees the same; the test shows nothing");
}

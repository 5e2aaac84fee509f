use stormwatch_baseline::{ClassScope, Distribution};

use super::judge::{tail_threshold, Basis};
use super::*;

fn distribution(values: impl Iterator<Item = u64>) -> Distribution {
    let mut distribution = Distribution::default();
    for value in values {
        distribution.observe(value, 0);
    }
    distribution
}

#[test]
fn light_tails_keep_the_plain_threshold() {
    let config = DetectConfig::default();
    let loop_1_to_5 = distribution((0..1_000).map(|i| 1 + i % 5));
    let high = loop_1_to_5.quantile(0.99) as f64;
    assert!(tail_threshold(&loop_1_to_5, high, &config) <= 15.0);
    assert!(judge(Some(&loop_1_to_5), 16, &config).is_some());
    assert!(judge(Some(&loop_1_to_5), 15, &config).is_none());
}

#[test]
fn heavy_tails_raise_the_threshold_to_their_own_rare_values() {
    let config = DetectConfig::default();
    // A Pareto(1, 1.8) call count, by its quantile function over an even grid, in a
    // scrambled order (a learned tail held by the ceiling is not what this is about).
    let pareto = distribution(
        (1..=10_000u64)
            .map(|i| i * 7_919 % 10_000 + 1)
            .map(|i| (1.0 / (1.0 - i as f64 / 10_001.0)).powf(1.0 / 1.8) as u64),
    );
    let plain = (pareto.quantile(0.99) as f64 * 3.0).max(pareto.quantile(0.99) as f64 + 10.0);
    let tail = tail_threshold(&pareto, pareto.quantile(0.99) as f64, &config);
    assert!(tail > 5.0 * plain, "tail {tail} vs plain {plain}");
    // Values the edge produces now and then do not fire; a storm far past them does.
    assert!(judge(Some(&pareto), 61, &config).is_none());
    assert!(judge(Some(&pareto), 5_000, &config).is_some());
}

#[test]
fn a_request_far_beyond_anything_the_system_did_alerts_whatever_its_class_allows() {
    let config = DetectConfig::default();
    let class = RootClass {
        service: stormwatch_model::Sym::new("gateway"),
        operation: stormwatch_model::Sym::new("GET /search"),
        query_shape: None,
    };
    let mut store = BaselineStore::new(100);
    // A heavy-tailed class (Pareto spans per request, the system's only traffic): its own
    // threshold is extrapolated far beyond its largest request.
    for i in 1..=10_000u64 {
        let quantile = (i * 7_919 % 10_000 + 1) as f64 / 10_001.0;
        let spans = (1.0 / (1.0 - quantile)).powf(1.0 / 1.8) as u64;
        store.observe_request_total(class, RequestMetric::Spans, spans, i);
    }
    let largest = store.class_scopes()[&(ClassScope::System, RequestMetric::Spans)].max();
    let beyond = (NEVER_SEEN_FACTOR * largest as f64) as u64 + 1;
    let own = store.request_totals().get(&(class, RequestMetric::Spans));
    assert!(judge(own, beyond, &config).is_none(), "its own tail allows {beyond}");
    let Outcome::Own(judged) = judge_total(&store, class, RequestMetric::Spans, beyond, &config) else {
        panic!("a class with its own history is judged on it")
    };
    let judged = judged.expect("never seen in the system");
    assert!(matches!(judged.basis, Basis::Unprecedented), "{:?}", judged.basis);
    assert_eq!(judged.threshold, NEVER_SEEN_FACTOR * largest as f64);
    let Outcome::Own(within) = judge_total(&store, class, RequestMetric::Spans, beyond - 2, &config) else {
        panic!("a class with its own history is judged on it")
    };
    assert!(within.is_none());
}

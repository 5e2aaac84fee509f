//! Judging one value against a baseline: its own once it has `learning_min_samples`, a wider
//! one (a scope above the key) while it is young, or the whole system's for a request beyond
//! anything it ever did; and when a young key that nothing judges holds a value back.

use stormwatch_baseline::{BaselineStore, ClassScope, Distribution, EdgeScope, RequestMetric, HOLD_FROM_SAMPLES};
use stormwatch_model::{Edge, RootClass};

use super::DetectConfig;

/// A value found beyond its threshold: the baseline's median and threshold, its history, and
/// which baseline it was.
pub(crate) struct Judgement {
    pub(crate) expected: f64,
    pub(crate) threshold: f64,
    pub(crate) samples: u64,
    pub(crate) since: u64,
    /// Which baseline judged.
    pub(crate) basis: Basis,
}

impl Judgement {
    /// A value beyond `threshold` of `distribution`, judged on `basis`.
    fn against(distribution: &Distribution, threshold: f64, basis: Basis) -> Judgement {
        Judgement {
            expected: distribution.quantile(0.5) as f64,
            threshold,
            samples: distribution.samples(),
            since: distribution.since_unix_nano(),
            basis,
        }
    }
}

/// Which baseline a judgement was made against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Basis {
    /// The key's own.
    Own,
    /// The key's own, whose median is only known to be under the value given (values under a
    /// floor are counted, not learned).
    OwnUnder,
    /// An ancestor's, the key being young: which, and how many samples the key has itself.
    Borrowed(Ancestor, u64),
    /// The whole system's: a request total beyond [`NEVER_SEEN_FACTOR`] times its largest.
    Unprecedented,
}

/// The wider baseline a young key is judged against: above a root class, or above an edge.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ancestor {
    Class(ClassScope),
    Edge(EdgeScope),
}

impl std::fmt::Display for Ancestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ancestor::Class(scope) => scope.fmt(f),
            Ancestor::Edge(scope) => scope.fmt(f),
        }
    }
}

/// How a per-trace key's value was judged.
pub(super) enum Outcome {
    /// By the key's own baseline: `Some` when beyond its threshold (never learned).
    Own(Option<Judgement>),
    /// The key being young, by a wider baseline (or within what it learned itself): `Some`
    /// when beyond the borrowed threshold (held back, not learned).
    Borrowed(Option<Judgement>),
    /// The key being young and no wider baseline having its minimum either, nothing judges
    /// it: `Some(limit)` when the value is far beyond what the key learned (values beyond
    /// `limit` are held back; see [`YOUNG_HOLD_FROM_SAMPLES`]).
    Unjudged(Option<f64>),
}

/// A young root class or edge (under `learning_min_samples`) judged against a scope above it
/// alerts only beyond this multiple of that scope's threshold (at its p99.9): a class that is
/// merely rarer or a bit heavier than its route, or an edge that loops a little more than its
/// caller's other calls, stays quiet; a storm does not.
pub const BORROWED_FACTOR: f64 = 2.0;

/// A per-trace baseline with this many samples, under `learning_min_samples` and judged by no
/// wider baseline either (the whole system being young), holds back a value beyond
/// [`YOUNG_HOLD_FACTOR`] times the largest it learned (and `min_excess` beyond it): a storm in
/// the system's first minutes is not learned, though nothing can judge it yet.
pub const YOUNG_HOLD_FROM_SAMPLES: u64 = 30;
/// See [`YOUNG_HOLD_FROM_SAMPLES`]. Per-trace counts are heavy-tailed: a few dozen samples'
/// largest value lies well below their p99, so only a value far beyond it is held.
pub const YOUNG_HOLD_FACTOR: u64 = 4;

/// The limit beyond which a young key that nothing judges holds a value back, if `observed`
/// is beyond it (see [`YOUNG_HOLD_FROM_SAMPLES`]).
fn far_beyond_young(own: Option<&Distribution>, observed: u64, config: &DetectConfig) -> Option<f64> {
    let own = own?;
    if own.samples() < YOUNG_HOLD_FROM_SAMPLES {
        return None;
    }
    let largest = own.max() as f64;
    let limit = (largest * YOUNG_HOLD_FACTOR as f64).max(largest + config.min_excess);
    (observed as f64 > limit).then_some(limit)
}

/// A request total beyond this multiple of the largest the whole system has learned (spans,
/// database calls or services per request, over every class) alerts whatever its class's own
/// baseline allows: a heavy-tailed class extrapolates its threshold far out, and nothing the
/// system ever did normally comes near this.
pub const NEVER_SEEN_FACTOR: f64 = 4.0;

/// A value judged against its own baseline: `None` while the baseline is too young to judge
/// (see below) or when the value is within its threshold.
pub(crate) fn judge(distribution: Option<&Distribution>, observed: u64, config: &DetectConfig) -> Option<Judgement> {
    let distribution = distribution?;
    // Values a young baseline held back count as history it has been through (a surge that
    // started before the baseline could judge must not keep it from judging), as long as what
    // it judges by, what it learned, is more than a handful.
    if !judges_on_its_own(distribution, config) {
        return None;
    }
    let threshold = threshold_of(distribution, config);
    (observed as f64 > threshold).then(|| Judgement::against(distribution, threshold, Basis::Own))
}

/// The `q` quantile of a value over all the requests `requests` counts, of which `learned`
/// holds those whose value reached `floor` (the others were counted, not learned): the floor
/// when it falls among the others.
fn floored_quantile(requests: &Distribution, learned: Option<&Distribution>, floor: u64, q: f64) -> u64 {
    let total = requests.samples();
    let kept = learned.map_or(0, Distribution::samples).min(total);
    let below = total - kept;
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    match learned {
        Some(learned) if rank > below && kept > 0 => {
            learned.quantile(((rank - below) as f64 / kept as f64).min(1.0)).max(floor)
        }
        _ => floor,
    }
}

/// The per-trace rule on a value learned only from `floor` up (time and bytes per request: a
/// value under a quarter of `min_excess` cannot move a threshold at least `min_excess` above
/// the quantile): judged once `requests`, which counts every request, has
/// `learning_min_samples`. A quantile among the values under the floor is taken to be the
/// floor, so the threshold errs high by less than the floor, and the median is then reported
/// as an upper bound ([`Basis::OwnUnder`]).
pub(super) fn judge_floored(
    requests: &Distribution,
    learned: Option<&Distribution>,
    floor: u64,
    observed: u64,
    config: &DetectConfig,
) -> Option<Judgement> {
    if !judges_on_its_own(requests, config) {
        return None;
    }
    let quantile = |q: f64| floored_quantile(requests, learned, floor, q);
    let high = quantile(config.quantile) as f64;
    // The tail's slope is measured from the p90 up. Under the floor it is unknown: with the
    // p99 under it too, nothing is extrapolated (the values are small, the excess decides);
    // with the p99 above it, the tail is taken to be as heavy as the rule allows (a
    // heavy-tailed key, whose real p90 may be far under the floor).
    let tail = if high <= floor as f64 {
        high
    } else {
        let unknown_under_floor = |q: f64| if q < config.quantile && quantile(q) <= floor { 0 } else { quantile(q) };
        tail_threshold_of(&unknown_under_floor, high, config)
    };
    let threshold = (high * config.ratio).max(high + config.min_excess).max(tail);
    let median = quantile(0.5);
    (observed as f64 > threshold).then(|| Judgement {
        expected: median as f64,
        threshold,
        samples: requests.samples(),
        since: requests.since_unix_nano(),
        basis: if median == floor { Basis::OwnUnder } else { Basis::Own },
    })
}

/// Whether a baseline has history enough to judge by itself: values it held back count as
/// history it has been through, as long as what it learned is more than a handful.
fn judges_on_its_own(distribution: &Distribution, config: &DetectConfig) -> bool {
    distribution.samples() + distribution.held() >= config.learning_min_samples
        && distribution.samples() >= HOLD_FROM_SAMPLES.min(config.learning_min_samples)
}

/// The threshold a young key is held to by a wider baseline: `max(q * ratio, q + min_excess)`
/// at the wider one's p99.9 (or `quantile`, if higher), times [`BORROWED_FACTOR`]. A wider
/// baseline mixes classes, so its tail is their mix, not a power law to extrapolate; its p99.9
/// is the heaviest of what it has seen often enough.
fn borrowed_threshold(distribution: &Distribution, config: &DetectConfig) -> f64 {
    let high = distribution.quantile(config.quantile.max(0.999)) as f64;
    (high * config.ratio).max(high + config.min_excess) * BORROWED_FACTOR
}

/// `max(q * ratio, q + min_excess, tail)` of a baseline (see the module's documentation).
fn threshold_of(distribution: &Distribution, config: &DetectConfig) -> f64 {
    let high = distribution.quantile(config.quantile) as f64;
    (high * config.ratio).max(high + config.min_excess).max(tail_threshold(distribution, high, config))
}

/// A request total of `class` judged against its own baseline (and, within it, against the
/// whole system's for what it never did), or, while that is young, against the nearest scope
/// above it (its route, its service, the system).
pub(super) fn judge_total(
    store: &BaselineStore,
    class: RootClass,
    metric: RequestMetric,
    observed: u64,
    config: &DetectConfig,
) -> Outcome {
    let ancestors = ClassScope::above(&class)
        .into_iter()
        .map(|scope| (Ancestor::Class(scope), store.class_scopes().get(&(scope, metric))));
    match judge_young(store.request_totals().get(&(class, metric)), observed, ancestors, config) {
        Outcome::Own(None) => Outcome::Own(unprecedented(store, metric, observed, config)),
        outcome => outcome,
    }
}

/// A request total beyond [`NEVER_SEEN_FACTOR`] times the largest the whole system learned,
/// once the system-wide baseline has `learning_min_samples`.
fn unprecedented(
    store: &BaselineStore,
    metric: RequestMetric,
    observed: u64,
    config: &DetectConfig,
) -> Option<Judgement> {
    let system = store.class_scopes().get(&(ClassScope::System, metric))?;
    if system.samples() < config.learning_min_samples {
        return None;
    }
    let threshold = NEVER_SEEN_FACTOR * system.max() as f64;
    (observed as f64 > threshold).then(|| Judgement::against(system, threshold, Basis::Unprecedented))
}

/// The largest calls per parent span of one trace on `edge`, judged against the edge's own
/// baseline or, while that is young, against the scopes above it (every call from its
/// caller's service to its callee's service, then to any callee of its kind).
pub(super) fn judge_fanout(store: &BaselineStore, edge: Edge, observed: u64, config: &DetectConfig) -> Outcome {
    let ancestors =
        EdgeScope::above(&edge).into_iter().map(|scope| (Ancestor::Edge(scope), store.edge_scopes().get(&scope)));
    judge_young(store.fanout().get(&edge), observed, ancestors, config)
}

/// A key judged against its own baseline once it has `learning_min_samples`; until then
/// against the nearest of `ancestors` that has them ([`borrowed_threshold`]), unless the key
/// has already learned as much itself; and when none has, by nothing (but a value far beyond
/// what the key learned is to be held back). Ancestors are looked up lazily: a mature key
/// costs no lookup of them.
fn judge_young<'a>(
    own: Option<&Distribution>,
    observed: u64,
    ancestors: impl IntoIterator<Item = (Ancestor, Option<&'a Distribution>)>,
    config: &DetectConfig,
) -> Outcome {
    let own_samples = own.map_or(0, Distribution::samples);
    if own_samples >= config.learning_min_samples {
        return Outcome::Own(judge(own, observed, config));
    }
    // Within what the key itself learned (its ordinary values, and what it held back and
    // learned once it recurred over hours): its own level, not a storm.
    if own.is_some_and(|own| own_samples > 0 && observed <= own.max()) {
        return Outcome::Borrowed(None);
    }
    for (ancestor, distribution) in ancestors {
        let Some(distribution) = distribution else { continue };
        if distribution.samples() < config.learning_min_samples {
            continue;
        }
        let threshold = borrowed_threshold(distribution, config);
        let basis = Basis::Borrowed(ancestor, own_samples);
        return Outcome::Borrowed(
            (observed as f64 > threshold).then(|| Judgement::against(distribution, threshold, basis)),
        );
    }
    Outcome::Unjudged(far_beyond_young(own, observed, config))
}

/// The value the baseline's own tail reaches with probability `false_alarm_rate`: the tail
/// exponent is measured between p90 and `quantile` and extrapolated beyond `quantile`,
/// as for a power law. Capped at one decade of value per decade of probability.
pub(super) fn tail_threshold(distribution: &Distribution, high: f64, config: &DetectConfig) -> f64 {
    tail_threshold_of(&|q| distribution.quantile(q), high, config)
}

/// [`tail_threshold`] of a distribution given by its quantile function.
fn tail_threshold_of(quantile: &dyn Fn(f64) -> u64, high: f64, config: &DetectConfig) -> f64 {
    let reference = 0.9_f64.min(config.quantile);
    let low = (quantile(reference) as f64).max(1.0);
    if high <= low || config.quantile >= 1.0 || config.false_alarm_rate <= 0.0 {
        return high;
    }
    let measured_decades = ((1.0 - reference) / (1.0 - config.quantile)).log10();
    if measured_decades <= 0.0 {
        return high;
    }
    let exponent = ((high / low).log10() / measured_decades).min(1.0);
    let remaining_decades = ((1.0 - config.quantile) / config.false_alarm_rate).log10().max(0.0);
    high * 10f64.powf(exponent * remaining_decades)
}

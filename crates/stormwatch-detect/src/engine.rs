//! The engine: assembly -> features -> detection -> learning -> throttling, as one
//! synchronous state machine. Given the same spans in the same order it produces the same
//! alerts, which is what makes `replay` reproducible and `serve` testable.

use stormwatch_assemble::{Assembler, AssemblerConfig, AssemblerStats, CompletedTrace};
use stormwatch_baseline::BaselineStore;
use stormwatch_model::{Alert, AlertKind, Dimension, DimensionState, Span, Sym, OVERFLOW};

use crate::correlated::{Correlated, CorrelatedConfig};
use crate::detectors::{detect, learn};
use crate::features::extract;
use crate::queues::Queues;
use crate::tuning::{Tuning, Verdict};
use crate::window::{correlated_finding, judge_window, WindowConfig, Windows};
use crate::{DetectConfig, Throttle};

/// Everything the engine is tuned by.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Trace assembly.
    pub assemble: AssemblerConfig,
    /// The per-trace detectors' thresholds.
    pub detect: DetectConfig,
    /// Repeats of one fingerprint within this much event time are folded into one summary.
    pub throttle_nanos: u64,
    /// Window-level detection.
    pub window: WindowConfig,
    /// The PCA detector over per-window edge rates.
    pub correlated: CorrelatedConfig,
    /// Closed windows are not judged here but handed out ([`Engine::take_closed_windows`]) for
    /// the merger of a consumer group, which judges them whole ([`Engine::judge_merged`]).
    pub share_windows: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            assemble: AssemblerConfig::default(),
            detect: DetectConfig::default(),
            throttle_nanos: 300 * 1_000_000_000,
            window: WindowConfig::default(),
            correlated: CorrelatedConfig::default(),
            share_windows: false,
        }
    }
}

/// Counters of detection, cumulative since start.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    /// Traces judged.
    pub traces_checked: u64,
    /// Complete traces that trained the baselines.
    pub traces_learned: u64,
    /// Traces whose parent links loop back on themselves (the loop is cut where found).
    pub traces_with_cycles: u64,
    /// Windows judged (those with enough entry requests) and skipped.
    pub windows_closed: u64,
    /// Traces whose window had already been judged.
    pub window_late_traces: u64,
    /// Spans whose parent is not in their trace (besides the root).
    pub orphan_spans: u64,
    /// Traces that carried a sampling probability below 1 (`tracestate` `ot=th:...`).
    pub traces_sampled: u64,
    /// Traces the judged ones stand for: each counts its adjusted count (capped by
    /// `max_adjusted_count`), so this estimates the traffic before sampling.
    pub traces_represented: u64,
    /// Findings before throttling, by kind (index of [`AlertKind::ALL`]).
    pub findings: [u64; AlertKind::ALL.len()],
    /// Alerts produced after throttling, by kind.
    pub alerts: [u64; AlertKind::ALL.len()],
    /// Findings of detectors in shadow mode (judged, not emitted), by kind.
    pub shadowed: [u64; AlertKind::ALL.len()],
    /// Findings the tuning dropped (overrides, allowlists, detectors off).
    pub suppressed: u64,
    /// Consumer traces tied back to the request that sent their messages.
    pub consumer_traces_tied: u64,
    /// Per-request time findings of warning severity held back as lone: no second request
    /// of the class did the same on the edge within a minute ([`crate::confirm`]).
    pub lone_slow_requests: u64,
    /// Findings of a trace whose messages were held for a `queue_amplification` judgement:
    /// the flood's own work in the trace, part of that one alert. (Findings of its consumers'
    /// traces that joined it are counted in the alert's explanation.)
    pub findings_in_held_floods: u64,
}

/// Assembly, detection, learning, window judgement and throttling as one synchronous,
/// deterministic state machine: spans in, alerts out. `serve`, `replay` and `eval` drive it.
pub struct Engine {
    assembler: Assembler,
    store: BaselineStore,
    detect: DetectConfig,
    throttle: Throttle,
    windows: Windows,
    correlated: Correlated,
    /// Requests that sent messages, until their consumers' work is in.
    queues: Queues,
    /// Lone slow requests, until a second one confirms them.
    confirmations: crate::confirm::Confirmations,
    clock: fn() -> u64,
    stats: EngineStats,
    completed: Vec<CompletedTrace>,
    share_windows: bool,
    /// Closed windows waiting to be shipped to the merger (`share_windows`).
    outgoing: Vec<crate::window::Window>,
    flushed: bool,
    tuning: Tuning,
    /// The last judged windows: (window end, calls per entry request on every edge).
    recent_windows: std::collections::VecDeque<(u64, Vec<(stormwatch_model::Edge, f64)>)>,
    /// Names folded into `<overflow>` so far, per dimension, as last reported.
    overflow_seen: [u64; Dimension::ALL.len()],
    /// The last traces that carried an `<overflow>` name (exemplars of a flood).
    overflow_traces: std::collections::VecDeque<stormwatch_model::TraceId>,
    overflow: Sym,
    /// The last judged window's load per edge.
    last_window: Option<LastWindow>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

struct LastWindow {
    start: u64,
    end: u64,
    entry_requests: u64,
    calls: Vec<(stormwatch_model::Edge, u64)>,
}

/// One edge in the last judged window, for dashboards (`/metrics`).
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeGauge {
    /// The edge.
    pub edge: stormwatch_model::Edge,
    /// Calls per second of event time.
    pub calls_per_second: f64,
    /// Calls per entry request, network-wide.
    pub calls_per_entry: f64,
    /// The edge's learned p99 of calls per entry request (0 before it has one).
    pub p99_per_entry: f64,
    /// `calls_per_entry / p99_per_entry`: 1 is at the p99; 0 without a baseline.
    pub score: f64,
}

/// Judged windows kept for the admin API (a minute at the default 10 s windows).
pub(crate) const RECENT_WINDOWS: usize = 6;

impl Engine {
    /// `clock` returns wall time in Unix nanoseconds, used only for `detected_at`.
    pub fn new(config: EngineConfig, mut store: BaselineStore, clock: fn() -> u64) -> Engine {
        // A full table may evict what was never judged on.
        store.evict_young_below(config.detect.learning_min_samples);
        let queues = Queues::new(config.assemble.trace_idle_nanos, config.assemble.trace_max_wait_nanos);
        Engine {
            queues,
            confirmations: crate::confirm::Confirmations::default(),
            assembler: Assembler::new(config.assemble),
            store,
            detect: config.detect,
            throttle: Throttle::new(config.throttle_nanos),
            windows: Windows::new(config.window),
            correlated: Correlated::new(config.correlated),
            clock,
            stats: EngineStats::default(),
            completed: Vec::new(),
            share_windows: config.share_windows,
            outgoing: Vec::new(),
            flushed: false,
            tuning: Tuning::default(),
            recent_windows: std::collections::VecDeque::new(),
            overflow_seen: [0; Dimension::ALL.len()],
            overflow_traces: std::collections::VecDeque::new(),
            overflow: Sym::new(OVERFLOW),
            last_window: None,
        }
    }

    /// The end of the last judged window (0 before one): changes when [`Engine::edge_gauges`]
    /// would.
    pub fn last_window_end(&self) -> u64 {
        self.last_window.as_ref().map_or(0, |w| w.end)
    }

    /// The edges of the last judged window with the most calls and the most anomalous
    /// (calls per entry request over the learned p99): the top `k` of each, without repeats,
    /// busiest first. At most `2 * k` edges, whatever the traffic.
    pub fn edge_gauges(&self, k: usize) -> Vec<EdgeGauge> {
        let Some(window) = &self.last_window else { return Vec::new() };
        let seconds = (window.end.saturating_sub(window.start) as f64 / 1e9).max(1e-9);
        let entries = window.entry_requests.max(1) as f64;
        let gauges: Vec<EdgeGauge> = window
            .calls
            .iter()
            .map(|(edge, calls)| {
                let per_entry = *calls as f64 / entries;
                let p99 = self
                    .store
                    .windows()
                    .get(&(stormwatch_baseline::WindowMetric::WorkPerEntry, *edge))
                    .map_or(0.0, |d| d.quantile(0.99) as f64 / 1000.0);
                EdgeGauge {
                    edge: *edge,
                    calls_per_second: *calls as f64 / seconds,
                    calls_per_entry: per_entry,
                    p99_per_entry: p99,
                    score: if p99 > 0.0 { per_entry / p99 } else { 0.0 },
                }
            })
            .collect();
        let top = |key: fn(&EdgeGauge) -> f64| {
            let mut ranked: Vec<&EdgeGauge> = gauges.iter().collect();
            ranked.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.edge.cmp(&b.edge)));
            ranked.into_iter().take(k).cloned().collect::<Vec<_>>()
        };
        let mut chosen = top(|g| g.calls_per_second);
        let mut seen: std::collections::HashSet<stormwatch_model::Edge> = chosen.iter().map(|g| g.edge).collect();
        for gauge in top(|g| g.score) {
            if seen.insert(gauge.edge) {
                chosen.push(gauge);
            }
        }
        chosen
    }

    /// Reports a cardinality flood: when names of a structural dimension (services,
    /// operations, statements, peers, query shapes) were folded into `<overflow>` since the
    /// last call, one `cardinality_flood` finding, throttled like any other (one alert, then
    /// counted summaries). `state` is [`stormwatch_model::Cardinality::state`]; the caller
    /// decides how often to look (the runtime: after every batch).
    pub fn note_cardinality(&mut self, state: &[DimensionState], out: &mut Vec<Alert>) {
        let grown: Vec<(DimensionState, u64)> = state
            .iter()
            .filter(|d| d.dimension.is_structural())
            .filter_map(|d| {
                let seen = self.overflow_seen[d.dimension as usize];
                (d.overflowed > seen).then(|| (*d, d.overflowed - seen))
            })
            .collect();
        // Exemplars are the traces that carried the folded names: until one completes, the
        // folding waits to be reported.
        if grown.is_empty() || self.overflow_traces.is_empty() {
            return;
        }
        for (d, _) in &grown {
            self.overflow_seen[d.dimension as usize] = d.overflowed;
        }
        let before = out.len();
        let now = (self.clock)();
        let at = match self.assembler.watermark() {
            0 => now,
            watermark => watermark,
        };
        let folded: u64 = grown.iter().map(|(_, n)| n).sum();
        let named: Vec<String> = grown
            .iter()
            .map(|(d, n)| {
                let limit = if d.distinct >= d.limit {
                    format!("its limit of {} names", d.limit)
                } else {
                    format!("its limit of {} bytes", d.byte_limit)
                };
                format!("{n} new {} past {limit}", d.dimension.as_str())
            })
            .collect();
        let contributors = grown
            .iter()
            .map(|(d, n)| stormwatch_model::Contributor {
                name: format!("names {}", d.dimension.as_str()),
                share: *n as f64 / folded as f64,
            })
            .collect();
        let finding = crate::Finding::notice(
            AlertKind::CardinalityFlood,
            folded as f64,
            "names_folded",
            stormwatch_model::Severity::Warning,
        )
        .shown_by(self.overflow_traces.iter().rev().copied().collect())
        .caused_by(contributors)
        .during(at, at)
        .against(0, at, None)
        .explained(format!(
            "The traffic is inventing names faster than stormwatch's cardinality limits allow: {}, folded into \
             `{OVERFLOW}` (a flood of invented names is itself an attack signal; raise `limits.*` if the growth is \
             legitimate).",
            named.join(", ")
        ));
        self.offer(finding, now, out);
        self.count_alerts(&out[before..]);
    }

    /// The baselines.
    pub fn store(&self) -> &BaselineStore {
        &self.store
    }

    /// The figures of the baselines that changed since the last call (all of them the first
    /// time, or after a whole table changed: then `true`), for a reader's copy of them.
    pub fn take_changed_rows(&mut self) -> (bool, Vec<stormwatch_baseline::inspect::RowFigures>) {
        stormwatch_baseline::inspect::take_changed(&mut self.store)
    }

    /// Puts a tuning in force: overrides, shadow modes and allowlists apply to the next
    /// findings; freezes stop learning at once.
    pub fn set_tuning(&mut self, tuning: Tuning) {
        let frozen = tuning.frozen_edges.iter().flat_map(|name| name.readings().iter().copied()).collect();
        self.store.set_freezing(tuning.freeze_all, frozen);
        self.tuning = tuning;
    }

    /// The tuning in force.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The last judged windows, oldest first: (window end, calls per entry request per edge,
    /// without the traces per-trace detectors reported).
    pub fn recent_windows(&self) -> impl Iterator<Item = &(u64, Vec<(stormwatch_model::Edge, f64)>)> {
        self.recent_windows.iter()
    }

    /// Replaces every baseline (an imported snapshot); the tuning's freezes carry over.
    pub fn replace_store(&mut self, store: BaselineStore) {
        let (freeze_all, frozen) = self.store.freezing();
        let (freeze_all, frozen) = (freeze_all, frozen.clone());
        self.store = store;
        self.store.evict_young_below(self.detect.learning_min_samples);
        self.store.set_freezing(freeze_all, frozen);
    }

    /// Continues from another store's window baselines (see [`BaselineStore::adopt_windows`]).
    pub fn adopt_windows(&mut self, other: BaselineStore) {
        self.store.adopt_windows(other);
    }

    /// The trace assembler.
    pub fn assembler(&self) -> &Assembler {
        &self.assembler
    }

    /// The assembler's counters.
    pub fn assembler_stats(&self) -> &AssemblerStats {
        self.assembler.stats()
    }

    /// Detection's counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Incidents being throttled.
    pub fn open_incidents(&self) -> usize {
        self.throttle.open_incidents()
    }

    /// Event time the oldest open incident opened at, if any.
    pub fn oldest_open_incident(&self) -> Option<u64> {
        self.throttle.oldest_open_incident()
    }

    /// Event time after which everything the engine was given at watermark `w` has been
    /// decided: its traces complete (`trace_max_wait`) and their windows judged. Add this to
    /// `w`.
    pub fn settle_horizon(&self) -> u64 {
        let window = self.windows.config();
        self.assembler
            .config()
            .trace_max_wait_nanos
            .saturating_add(window.window_nanos)
            .saturating_add(window.close_delay_nanos)
    }

    /// Windows not judged (or shipped) yet.
    pub fn open_windows(&self) -> usize {
        self.windows.open_windows()
    }

    /// With `share_windows`: the windows closed since the last call, for the merger.
    pub fn take_closed_windows(&mut self) -> Vec<crate::window::Window> {
        std::mem::take(&mut self.outgoing)
    }

    /// Every window of this engine ending at or before this event time is closed (after
    /// [`Engine::flush`], all of them).
    pub fn windows_closed_through(&self) -> u64 {
        if self.flushed {
            return u64::MAX;
        }
        self.assembler.watermark().saturating_sub(self.windows.config().close_delay_nanos)
    }

    /// Message-sending requests remembered to tie their consumers back.
    pub fn queue_senders(&self) -> usize {
        self.queues.len()
    }

    /// Judges windows merged from the engines of a consumer group, as if closed here.
    pub fn judge_merged(&mut self, windows: Vec<crate::window::Window>, out: &mut Vec<Alert>) {
        let before = out.len();
        self.judge_all(windows, out);
        self.count_alerts(&out[before..]);
    }

    /// Feeds spans; alerts that became due are appended to `out`.
    pub fn push(&mut self, spans: impl IntoIterator<Item = Span>, out: &mut Vec<Alert>) {
        self.push_from(spans, None, out);
    }

    /// [`Engine::push`] for spans that came from `source` (a Kafka input partition): a trace
    /// whose spans came from several is counted (`AssemblerStats::traces_split`).
    pub fn push_from(&mut self, spans: impl IntoIterator<Item = Span>, source: Option<i32>, out: &mut Vec<Alert>) {
        let mut completed = std::mem::take(&mut self.completed);
        for span in spans {
            self.assembler.push_from(span, source, &mut completed);
        }
        self.process(&mut completed, out);
        self.completed = completed;
    }

    /// Moves event time forward without spans (the live idle fallback).
    pub fn advance_to(&mut self, watermark: u64, out: &mut Vec<Alert>) {
        let mut completed = std::mem::take(&mut self.completed);
        self.assembler.advance_to(watermark, &mut completed);
        self.process(&mut completed, out);
        self.completed = completed;
    }

    /// Completes every buffered trace and closes every incident.
    pub fn flush(&mut self, out: &mut Vec<Alert>) {
        let mut completed = std::mem::take(&mut self.completed);
        self.assembler.flush(&mut completed);
        self.process(&mut completed, out);
        let before = out.len();
        let mut raised = Vec::new();
        self.queues.flush(&mut raised);
        let now = (self.clock)();
        for finding in raised {
            self.offer(finding, now, out);
        }
        let closed = self.windows.close_all();
        self.judge_windows(closed, out);
        self.flushed = true;
        self.throttle.flush((self.clock)(), out);
        self.count_alerts(&out[before..]);
        self.completed = completed;
    }

    fn process(&mut self, completed: &mut Vec<CompletedTrace>, out: &mut Vec<Alert>) {
        let before = out.len();
        let now = (self.clock)();
        let mut raised = Vec::new();
        for trace in completed.drain(..) {
            let mut features = extract(&trace);
            self.stats.traces_checked += 1;
            self.stats.orphan_spans += features.orphan_spans;
            self.stats.traces_with_cycles += u64::from(features.has_cycle);
            if features.adjusted_count > 1.0 {
                self.stats.traces_sampled += 1;
            }
            if self.carries_overflow(&features) {
                if self.overflow_traces.len() == crate::window::MAX_EXEMPLARS {
                    self.overflow_traces.pop_front();
                }
                self.overflow_traces.push_back(features.trace_id);
            }
            let watermark = self.assembler.watermark();
            let requester =
                if features.consumed.origins.is_empty() { None } else { self.queues.consumed(&features, watermark) };
            let (findings, anomalies) = detect(&features, &self.store, &self.detect);
            // Work a per-trace detector reported is not window evidence; a new-edge note (info)
            // explains no excess.
            let flagged = requester.is_some_and(|r| r.flooded)
                || findings
                    .iter()
                    .any(|f| !(f.kind == AlertKind::NewEdge && f.severity == stormwatch_model::Severity::Info));
            // A lone slow request waits for a second (its time is an anomaly all the same).
            let findings = self.confirmations.confirmed(findings, features.end_unix_nano);
            self.stats.lone_slow_requests = self.confirmations.lone;
            if features.complete {
                learn(&features, &mut self.store, &self.detect, &anomalies);
                self.stats.traces_learned += 1;
            }
            let findings = match requester.filter(|r| r.holding) {
                // The flood's work: findings that join its held alert (and say so in it).
                Some(requester) => self.queues.fold(requester.trace, findings),
                None => findings,
            };
            self.judge_sends(&features, findings, now, out);
            if let Some(requester) = requester {
                // The consumer's work is its requester's, in windows too.
                self.stats.consumer_traces_tied += 1;
                let root =
                    features.root_class.map(|class| stormwatch_model::Node::service(class.service, class.operation));
                if let Some(consumer) = features.consumed.entry.or(root) {
                    features.consumed.tied_back = Some(crate::features::Tie { queue: requester.queue, consumer });
                }
                features.root_class = requester.class;
                features.client = requester.client;
                features.user = requester.user;
            }
            let store = &self.store;
            let slowdown = |edge: &stormwatch_model::Edge| store.slowdown(stormwatch_baseline::PaceLane::of(&edge.to));
            self.stats.traces_represented += self.windows.add_paced(&features, flagged, &slowdown);
        }
        self.queues.settle(self.assembler.watermark(), &mut raised);
        for finding in raised {
            self.offer(finding, now, out);
        }
        let closed = self.windows.close_due(self.assembler.watermark());
        self.judge_windows(closed, out);
        self.throttle.expire(self.assembler.watermark(), now, out);
        self.count_alerts(&out[before..]);
    }

    /// Closed windows: shipped to the merger, or judged here.
    fn judge_windows(&mut self, closed: Vec<crate::window::Window>, out: &mut Vec<Alert>) {
        if self.share_windows {
            self.outgoing.extend(closed);
            self.stats.window_late_traces = self.windows.late_traces;
        } else {
            self.judge_all(closed, out);
        }
    }

    fn judge_all(&mut self, closed: Vec<crate::window::Window>, out: &mut Vec<Alert>) {
        let now = (self.clock)();
        for window in closed {
            self.stats.windows_closed += 1;
            let findings = judge_window(&window, &mut self.store, &self.detect, self.windows.config());
            if window.entry_requests >= self.windows.config().min_entry_requests {
                if self.recent_windows.len() == RECENT_WINDOWS {
                    self.recent_windows.pop_front();
                }
                self.recent_windows.push_back((window.end, window.rates()));
                self.last_window = Some(LastWindow {
                    start: window.start,
                    end: window.end,
                    entry_requests: window.entry_requests,
                    calls: window.calls().collect(),
                });
            }
            // The network-wide view, for windows no other detector explained (and only they
            // are learned as normal).
            let mut findings = findings;
            if findings.is_empty() && window.entry_requests >= self.windows.config().min_entry_requests {
                // Out of the store while it is judged, so the store can say what is frozen.
                let mut model = self.store.take_correlated();
                let store = &self.store;
                let residual =
                    self.correlated.observe(&mut model, &window.rates(), window.entry_requests, window.end, &|edge| {
                        store.is_frozen(edge)
                    });
                self.store.set_correlated(model);
                if let Some(residual) = residual {
                    findings.push(correlated_finding(&window, residual, &self.detect));
                }
            }
            for finding in findings {
                self.offer(finding, now, out);
            }
        }
        self.stats.window_late_traces = self.windows.late_traces;
    }

    /// A finding through the tuning, then the throttle.
    pub(super) fn offer(&mut self, finding: crate::Finding, now: u64, out: &mut Vec<Alert>) {
        self.stats.findings[finding.kind.index()] += 1;
        let at = finding.end_unix_nano;
        match self.tuning.judge(finding, at) {
            Verdict::Emit(finding) => self.throttle.offer(finding, now, out),
            Verdict::Shadow(finding) => self.stats.shadowed[finding.kind.index()] += 1,
            Verdict::Suppressed(_) => self.stats.suppressed += 1,
        }
    }

    /// Whether a trace names a node `<overflow>`.
    fn carries_overflow(&self, features: &crate::TraceFeatures) -> bool {
        let o = self.overflow;
        let node = |n: &stormwatch_model::Node| n.service == o || n.operation == o;
        features.root_class.is_some_and(|c| c.service == o || c.operation == o || c.query_shape == Some(o))
            || features.edges.iter().any(|e| node(&e.edge.from) || node(&e.edge.to))
    }

    fn count_alerts(&mut self, alerts: &[Alert]) {
        for alert in alerts {
            self.stats.alerts[alert.kind.index()] += 1;
        }
    }
}

mod sends;
#[cfg(test)]
mod tests;

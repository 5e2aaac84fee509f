//! The engine: assembly -> features -> detection -> learning -> throttling, as one
//! synchronous state machine. Given the same spans in the same order it produces the same
//! alerts, which is what makes `replay` reproducible and `serve` testable.

use stormwatch_assemble::{Assembler, AssemblerConfig, AssemblerStats, CompletedTrace};
use stormwatch_baseline::BaselineStore;
use stormwatch_model::{Alert, AlertKind, Span};

use crate::detectors::{detect, learn};
use crate::features::extract;
use crate::{DetectConfig, Throttle};

/// Everything the engine is tuned by.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub assemble: AssemblerConfig,
    pub detect: DetectConfig,
    /// Repeats of one fingerprint within this much event time are folded into one summary.
    pub throttle_nanos: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            assemble: AssemblerConfig::default(),
            detect: DetectConfig::default(),
            throttle_nanos: 300 * 1_000_000_000,
        }
    }
}

/// Counters of detection, cumulative since start.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub traces_checked: u64,
    /// Complete traces that trained the baselines.
    pub traces_learned: u64,
    pub traces_with_cycles: u64,
    pub orphan_spans: u64,
    /// Findings before throttling, by kind (index of [`AlertKind::ALL`]).
    pub findings: [u64; 3],
    /// Alerts produced after throttling, by kind.
    pub alerts: [u64; 3],
}

fn kind_index(kind: AlertKind) -> usize {
    AlertKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

pub struct Engine {
    assembler: Assembler,
    store: BaselineStore,
    detect: DetectConfig,
    throttle: Throttle,
    clock: fn() -> u64,
    stats: EngineStats,
    completed: Vec<CompletedTrace>,
}

impl Engine {
    /// `clock` returns wall time in Unix nanoseconds, used only for `detected_at`.
    pub fn new(config: EngineConfig, store: BaselineStore, clock: fn() -> u64) -> Engine {
        Engine {
            assembler: Assembler::new(config.assemble),
            store,
            detect: config.detect,
            throttle: Throttle::new(config.throttle_nanos),
            clock,
            stats: EngineStats::default(),
            completed: Vec::new(),
        }
    }

    pub fn store(&self) -> &BaselineStore {
        &self.store
    }

    pub fn assembler(&self) -> &Assembler {
        &self.assembler
    }

    pub fn assembler_stats(&self) -> &AssemblerStats {
        self.assembler.stats()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn open_incidents(&self) -> usize {
        self.throttle.open_incidents()
    }

    /// Feeds spans; alerts that became due are appended to `out`.
    pub fn push(&mut self, spans: impl IntoIterator<Item = Span>, out: &mut Vec<Alert>) {
        let mut completed = std::mem::take(&mut self.completed);
        for span in spans {
            self.assembler.push(span, &mut completed);
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
        self.throttle.flush((self.clock)(), out);
        self.count_alerts(&out[before..]);
        self.completed = completed;
    }

    fn process(&mut self, completed: &mut Vec<CompletedTrace>, out: &mut Vec<Alert>) {
        let before = out.len();
        let now = (self.clock)();
        for trace in completed.drain(..) {
            let features = extract(&trace);
            self.stats.traces_checked += 1;
            self.stats.orphan_spans += features.orphan_spans;
            self.stats.traces_with_cycles += u64::from(features.has_cycle);
            let (findings, anomalies) = detect(&features, &self.store, &self.detect);
            if features.complete {
                learn(&features, &mut self.store, &anomalies);
                self.stats.traces_learned += 1;
            }
            for finding in findings {
                self.stats.findings[kind_index(finding.kind)] += 1;
                self.throttle.offer(finding, now, out);
            }
        }
        self.throttle.expire(self.assembler.watermark(), now, out);
        self.count_alerts(&out[before..]);
    }

    fn count_alerts(&mut self, alerts: &[Alert]) {
        for alert in alerts {
            self.stats.alerts[kind_index(alert.kind)] += 1;
        }
    }
}

#[cfg(test)]
mod tests;

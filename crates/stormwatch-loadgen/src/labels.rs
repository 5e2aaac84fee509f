//! Ground truth: for every change of a scenario, when it ran and which traces it touched.
//! Written next to generated files (`*.labels.json`) and used by `eval`.

use serde::{Deserialize, Serialize};
use stormwatch_model::{rfc3339, TraceId};

use crate::scenario::Scenario;

/// Trace ids kept per change; the count goes on past it.
pub const MAX_LABELLED_TRACES: usize = 10_000;

/// One labelled change as it happened: when, which traces, and what must detect it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeLabel {
    /// The change's name in the scenario.
    pub name: String,
    /// `fanout_amplification`, `n_plus_one`, ..., `flash_crowd`, `new_call`.
    pub kind: String,
    /// Attacks must be detected; legitimate changes must stay quiet.
    pub attack: bool,
    /// RFC 3339 event time it starts.
    pub start: String,
    /// RFC 3339 event time it ends.
    pub end: String,
    /// Event time it starts, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// Event time it ends, Unix nanoseconds.
    pub end_unix_nano: u64,
    /// Alert kinds that count as detecting it.
    pub detect_as: Vec<String>,
    /// Why a miss is expected today, if it is.
    pub expected_to_fail: Option<String>,
    /// The entry (`"service operation"`) a detecting alert must name among its contributors.
    #[serde(default)]
    pub contributor: Option<String>,
    /// Traces the change altered (all of them, not only those listed).
    pub traces: u64,
    /// The first `MAX_LABELLED_TRACES` of them, hex.
    pub trace_ids: Vec<String>,
}

impl ChangeLabel {
    pub(crate) fn record(&mut self, trace_id: [u8; 16]) {
        self.traces += 1;
        if self.trace_ids.len() < MAX_LABELLED_TRACES {
            self.trace_ids.push(TraceId(trace_id).to_string());
        }
    }
}

/// The ground truth of one generated run (`loadgen --labels`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    /// The scenario's name.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// Event time the run starts, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// Event time it ends, Unix nanoseconds.
    pub end_unix_nano: u64,
    /// Its labelled changes.
    pub changes: Vec<ChangeLabel>,
}

impl Labels {
    pub(crate) fn new(scenario: &Scenario) -> Labels {
        let start = scenario.start_unix_seconds * 1_000_000_000;
        let end = start + scenario.duration.as_nanos() as u64;
        Labels {
            scenario: scenario.name.clone(),
            seed: scenario.seed,
            start_unix_nano: start,
            end_unix_nano: end,
            changes: scenario
                .changes
                .iter()
                .map(|change| {
                    let (from, to) = (start + change.start.as_nanos() as u64, start + change.end.as_nanos() as u64);
                    ChangeLabel {
                        name: change.name.clone(),
                        kind: change.kind.as_str().into(),
                        attack: change.kind.is_attack(),
                        start: rfc3339(from),
                        end: rfc3339(to),
                        start_unix_nano: from,
                        end_unix_nano: to,
                        detect_as: change.detect_as.clone(),
                        expected_to_fail: change.expected_to_fail.clone(),
                        contributor: change.contributor.clone(),
                        traces: 0,
                        trace_ids: Vec::new(),
                    }
                })
                .collect(),
        }
    }
}

//! Synthetic traffic for validating stormwatch: scenario files describing a topology and
//! labelled changes (attacks that must be detected, legitimate changes that must stay quiet),
//! a seeded generator that turns them into the OTLP export requests real SDKs would send, and
//! the scoring of `eval`. Pure: no sockets, no files but what callers pass in (and the shipped
//! scenarios, embedded); deterministic for a given seed.

#![warn(missing_docs)]

mod distribution;
pub mod eval;
mod generate;
mod labels;
mod scenario;
pub mod shipped;
pub mod svg;
mod topology;

pub use distribution::{Count, Rng};
pub use generate::{GeneratedTrace, Generator};
pub use labels::{ChangeLabel, Labels, MAX_LABELLED_TRACES};
pub use scenario::{Call, Change, ChangeKind, Entry, EvalSettings, Operation, Scenario, ScenarioError};
pub use topology::GeneratedTopology;

#[cfg(test)]
mod tests;

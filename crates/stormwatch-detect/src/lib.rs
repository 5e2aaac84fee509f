//! Detection: from an assembled trace to explained alerts.
//!
//! * [`features`] turns a trace into edges, calls per parent span and work per root request.
//! * [`detectors`] compares those with the learned baselines and learns what is normal.
//! * [`throttle`] folds repeats of one incident into a handful of alerts.
//! * [`merge`] folds the windows of several engines (a Kafka consumer group) into one.
//! * [`Engine`] ties assembly, detection, learning and throttling into one synchronous,
//!   deterministic state machine that `serve` and `replay` both drive.
//!
//! Everything here is pure: values in, values out, no sockets, no threads. The wall clock is
//! read only through the clock function the engine is given.

#![warn(missing_docs)]

pub mod confirm;
pub mod correlated;
pub mod detectors;
mod engine;
pub mod features;
mod finding;
pub mod graph;
pub mod merge;
pub mod queues;
pub mod throttle;
pub mod tuning;
pub mod window;

pub use detectors::DetectConfig;
pub use engine::{EdgeGauge, Engine, EngineConfig, EngineStats};
pub use features::{extract, CacheUse, EdgeFeatures, TraceFeatures};
pub use finding::Finding;
pub use merge::{Partials, PartialsError, WindowMerger};
pub use throttle::Throttle;
pub use window::{Window, WindowConfig, Windows};

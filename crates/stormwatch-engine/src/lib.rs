//! stormwatch's runtime, shared by `serve` and `replay`: the engine thread
//! ([`Pipeline`], fed by the bounded span queue), the alert sink task with its spool and
//! backoff, window and baseline sharing in a Kafka consumer group, the admin API's answers
//! (computed on the engine thread from its own state), the tuning file, the configuration
//! (`config`: embedded defaults, each taken from the crate that owns the setting) and `serve`'s
//! wiring of receivers, engine and admin API with a bounded shutdown.
//!
//! The decisions live in the library crates below it (`stormwatch-assemble`,
//! `stormwatch-baseline`, `stormwatch-detect`); the sockets in `stormwatch-io`. This crate
//! owns the threads and channels between them, and the order things happen in: alerts reach
//! the sink before the Kafka positions they settle, and a position is committed only after
//! everything before it was delivered.

#![warn(missing_docs)]

pub mod admin;
pub mod config;
mod delivery;
mod engine_loop;
mod pipeline;
mod saving;
pub mod serve;
pub mod sharing;
pub mod tuning;

pub use pipeline::{open_sink, restore, EngineOptions, EngineReport, Pipeline, TuningOptions};
pub use sharing::{decode_shared, SharingOptions};

//! End-to-end tests: the real `stormwatch` binary, real OTLP exporters from the
//! OpenTelemetry SDK, a real Kafka-protocol broker (`KAFKA_BOOTSTRAP`, started by
//! `scripts/test.sh`), real files and sockets.

// A test reads as one story from setup to assertion; the 80-line limit is for product code.
#![allow(clippy::too_many_lines)]

mod baseline;
mod bench;
mod browser;
mod compose;
mod console;
mod hardening;
mod kafka_input;
mod kafka_windows;
mod reliability;
mod replay;
mod scenarios;
mod security;
mod serve;
mod support;

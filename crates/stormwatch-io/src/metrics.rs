//! Process metrics in the Prometheus text format. Counters are atomics updated where things
//! happen; engine gauges are published by the engine thread after each batch.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use stormwatch_model::AlertKind;

macro_rules! metrics {
    ($($(#[doc = $help:literal])* $name:ident : $type:literal,)*) => {
        /// Every metric the engine exports. All fields are monotonic counters or gauges.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[doc = $help])* pub $name: AtomicU64,)*
            /// Alerts confirmed written by the sink, by kind (index of `AlertKind::ALL`).
            pub alerts_emitted: [AtomicU64; AlertKind::ALL.len()],
            /// Findings of detectors in shadow mode, by kind: what they would have alerted.
            pub alerts_shadowed: [AtomicU64; AlertKind::ALL.len()],
            /// Findings of the detectors before throttling and tuning, by kind.
            pub findings: [AtomicU64; AlertKind::ALL.len()],
            /// The top edges of the last judged window (bounded: see [`EdgeSeries`]).
            pub edges: std::sync::Mutex<Vec<EdgeSeries>>,
            /// The end of the window `edges` come from (not rendered).
            pub edges_window_end: AtomicU64,
            /// Connections of each listener (index of [`crate::server::Listener::ALL`]).
            pub listeners: [ListenerMetrics; 3],
        }

        impl Metrics {
            /// The Prometheus text exposition of every metric.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let help = concat!($($help),*).trim();
                    let name = concat!("stormwatch_", stringify!($name));
                    let _ = writeln!(out, "# HELP {name} {help}");
                    let _ = writeln!(out, "# TYPE {name} {}", $type);
                    let _ = writeln!(out, "{name} {}", self.$name.load(Ordering::Relaxed));
                )*
                let _ = writeln!(out, "# HELP stormwatch_alerts_emitted_total Alerts confirmed written by the alert sink, by kind.");
                let _ = writeln!(out, "# TYPE stormwatch_alerts_emitted_total counter");
                for (kind, count) in AlertKind::ALL.iter().zip(&self.alerts_emitted) {
                    let _ = writeln!(out, "stormwatch_alerts_emitted_total{{kind=\"{}\"}} {}", kind.as_str(), count.load(Ordering::Relaxed));
                }
                let _ = writeln!(out, "# HELP stormwatch_alerts_shadowed_total Findings of detectors in shadow mode (judged, not emitted), by kind.");
                let _ = writeln!(out, "# TYPE stormwatch_alerts_shadowed_total counter");
                for (kind, count) in AlertKind::ALL.iter().zip(&self.alerts_shadowed) {
                    let _ = writeln!(out, "stormwatch_alerts_shadowed_total{{kind=\"{}\"}} {}", kind.as_str(), count.load(Ordering::Relaxed));
                }
                let _ = writeln!(out, "# HELP stormwatch_findings_total Findings of the detectors before throttling and tuning, by kind.");
                let _ = writeln!(out, "# TYPE stormwatch_findings_total counter");
                for (kind, count) in AlertKind::ALL.iter().zip(&self.findings) {
                    let _ = writeln!(out, "stormwatch_findings_total{{kind=\"{}\"}} {}", kind.as_str(), count.load(Ordering::Relaxed));
                }
                render_cardinality(&mut out, &stormwatch_model::Cardinality::global().state());
                render_listeners(&mut out, &self.listeners);
                render_edges(&mut out, &self.edges.lock().unwrap_or_else(|e| e.into_inner()));
                out
            }
        }
    };
}

/// What one listener's connections did.
#[derive(Default)]
pub struct ListenerMetrics {
    /// Open now.
    pub connections: AtomicU64,
    /// Closed at once: the listener held `server.max_connections` busy ones.
    pub refused: AtomicU64,
    /// Closed to make room for a new connection (the longest idle).
    pub evicted: AtomicU64,
    /// Closed for silence: idle past `server.idle_timeout`, or no request head within
    /// `server.header_timeout`.
    pub timed_out: AtomicU64,
}

impl std::fmt::Debug for ListenerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerMetrics").finish_non_exhaustive()
    }
}

fn render_listeners(out: &mut String, listeners: &[ListenerMetrics; 3]) {
    type Value = fn(&ListenerMetrics) -> &AtomicU64;
    let series: [(&str, &str, &str, Value); 4] = [
        ("stormwatch_connections", "gauge", "Connections open, by listener.", |l| &l.connections),
        (
            "stormwatch_connections_refused_total",
            "counter",
            "Connections closed at once because the listener held server.max_connections busy ones, by listener.",
            |l| &l.refused,
        ),
        (
            "stormwatch_connections_evicted_total",
            "counter",
            "Idle connections closed to make room for a new one at server.max_connections, by listener.",
            |l| &l.evicted,
        ),
        (
            "stormwatch_connections_timed_out_total",
            "counter",
            "Connections closed for silence (server.idle_timeout, server.header_timeout), by listener.",
            |l| &l.timed_out,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (listener, metrics) in crate::server::Listener::ALL.iter().zip(listeners) {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{}\"}} {}",
                listener.as_str(),
                value(metrics).load(Ordering::Relaxed)
            );
        }
    }
}

/// One edge of the last judged window, as `/metrics` shows it: the top
/// `server.metrics_top_edges` by calls per second and the top as many by anomaly score, so at
/// most twice that many series per metric, whatever the traffic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeSeries {
    /// The caller's service.
    pub from_service: String,
    /// The caller's operation.
    pub from_operation: String,
    /// The callee's service (or database, cache, queue, peer name).
    pub to_service: String,
    /// The callee's operation.
    pub to_operation: String,
    /// The callee's kind.
    pub to_kind: String,
    /// Calls per second of event time.
    pub calls_per_second: f64,
    /// Calls per entry request, network-wide.
    pub calls_per_entry: f64,
    /// The learned p99 of calls per entry request.
    pub p99_per_entry: f64,
    /// Calls per entry request over that p99.
    pub score: f64,
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render_edges(out: &mut String, edges: &[EdgeSeries]) {
    type Value = fn(&EdgeSeries) -> f64;
    let series: [(&str, &str, Value); 4] = [
        ("stormwatch_edge_calls_per_second", "Calls per second on the edge in the last judged window.", |e| {
            e.calls_per_second
        }),
        (
            "stormwatch_edge_calls_per_entry",
            "Calls on the edge per entry request, network-wide, in the last judged window.",
            |e| e.calls_per_entry,
        ),
        (
            "stormwatch_edge_baseline_p99_per_entry",
            "The edge's learned p99 of calls per entry request (0: none yet).",
            |e| e.p99_per_entry,
        ),
        (
            "stormwatch_edge_anomaly_score",
            "Calls per entry request over the learned p99 (1 = at the p99; 0: no baseline yet).",
            |e| e.score,
        ),
    ];
    for (name, help, value) in series {
        let _ =
            writeln!(out, "# HELP {name} {help} Top edges by load and by score only (server.metrics_top_edges each).");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for e in edges {
            let _ = writeln!(
                out,
                "{name}{{from_service=\"{}\",from_operation=\"{}\",to_service=\"{}\",to_operation=\"{}\",to_kind=\"{}\"}} {}",
                label(&e.from_service),
                label(&e.from_operation),
                label(&e.to_service),
                label(&e.to_operation),
                label(&e.to_kind),
                value(e)
            );
        }
    }
}

/// Names interned per dimension (`limits.*`), the bytes they take, the limits, and names
/// folded into `<overflow>`, truncated or escaped.
fn render_cardinality(out: &mut String, state: &[stormwatch_model::DimensionState]) {
    type Value = fn(&stormwatch_model::DimensionState) -> u64;
    let series: [(&str, &str, &str, Value); 7] = [
        ("stormwatch_cardinality_names", "gauge", "Distinct names interned, by dimension.", |d| d.distinct as u64),
        ("stormwatch_cardinality_limit", "gauge", "Most distinct names kept, by dimension (limits.*).", |d| {
            d.limit as u64
        }),
        (
            "stormwatch_cardinality_bytes",
            "gauge",
            "Bytes the interned names take, bookkeeping included, by dimension.",
            |d| d.bytes as u64,
        ),
        (
            "stormwatch_cardinality_bytes_limit",
            "gauge",
            "Most bytes the names may take, by dimension (limits.*_bytes).",
            |d| d.byte_limit as u64,
        ),
        (
            "stormwatch_cardinality_overflow_total",
            "counter",
            "New names past either limit, folded into <overflow>, by dimension.",
            |d| d.overflowed,
        ),
        (
            "stormwatch_names_truncated_total",
            "counter",
            "Names longer than their dimension allows, cut to end in an ellipsis, by dimension.",
            |d| d.truncated,
        ),
        (
            "stormwatch_names_escaped_total",
            "counter",
            "Names whose control or text-reordering characters were written as escapes, by dimension.",
            |d| d.escaped,
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for d in state {
            let _ = writeln!(out, "{name}{{dimension=\"{}\"}} {}", d.dimension.as_str(), value(d));
        }
    }
}

metrics! {
    /// Spans accepted by the OTLP receivers.
    spans_received_total: "counter",
    /// Spans the engine took from the queue and ran through assembly and detection.
    spans_processed_total: "counter",
    /// Spans rejected individually (bad ids), reported through OTLP partial_success.
    spans_rejected_total: "counter",
    /// Export requests refused because the engine queue was full (retryable).
    requests_refused_total: "counter",
    /// Export requests rejected as undecodable or too large.
    requests_invalid_total: "counter",
    /// Export requests refused for a missing or wrong bearer token (server.ingest_token).
    requests_unauthenticated_total: "counter",
    /// Export requests refused because server.max_receiving_bytes of bodies were being received
    /// and decoded already (retryable).
    requests_busy_total: "counter",
    /// Requests whose body came too slowly (server.body_timeout, server.min_body_rate), refused.
    requests_body_timeout_total: "counter",
    /// Requests refused for a Host header the listener does not serve, or a cross-origin Origin.
    requests_misdirected_total: "counter",
    /// Bytes of request bodies being received and decoded now: exports (at most
    /// server.max_receiving_bytes) and admin writes (at most server.max_import_bytes).
    receiving_bytes: "gauge",
    /// TLS handshakes that failed or timed out (no client certificate, wrong CA, plain HTTP).
    tls_handshake_failures_total: "counter",
    /// Spans that arrived after their trace had completed (gathered: a consumer's late part of a trace is judged as a continuation).
    late_spans_total: "counter",
    /// Late spans dropped: their part of the trace continued no message send (redeliveries, spans that missed their trace).
    late_spans_dropped_total: "counter",
    /// Late parts of traces judged as continuations: messages consumed after their sender's trace had completed.
    trace_continuations_total: "counter",
    /// Consumer traces tied back to the request that sent their messages (by span links or parentage).
    consumer_traces_tied_total: "counter",
    /// Per-request time findings (warning) held back as lone: no second request of the class did the same on the edge within a minute.
    lone_slow_requests_total: "counter",
    /// Message-sending requests remembered to tie their consumers back (at most 100,000).
    queue_senders: "gauge",
    /// Spans with a zero timestamp or an end before their start.
    bad_timestamp_spans_total: "counter",
    /// Spans too far in the future to move event time.
    clock_skew_spans_total: "counter",
    /// Traces completed and checked.
    traces_completed_total: "counter",
    /// Traces completed early, as incomplete, because the in-flight bound was reached.
    traces_evicted_total: "counter",
    /// Traces completed at trace_max_wait.
    traces_max_wait_total: "counter",
    /// Traces completed without a root span.
    traces_without_root_total: "counter",
    /// Traces whose spans arrived on more than one Kafka input partition (the topic is not partitioned by trace id; engines sharing its partitions would each judge a part).
    traces_split_across_partitions_total: "counter",
    /// Spans whose resource named no service (a collector lost it), given the service of the process they ran in, from their trace.
    spans_service_filled_total: "counter",
    /// Spans whose resource named no service and whose trace did not say which it was: judged as unknown_service.
    spans_service_unknown_total: "counter",
    /// Event-time windows closed for the window-level detectors.
    windows_closed_total: "counter",
    /// Traces that completed after their window had been judged.
    window_late_traces_total: "counter",
    /// Traces judged that carried a sampling probability below 1 (tracestate ot=th:...).
    traces_sampled_total: "counter",
    /// Traces the judged ones stand for under probability sampling (each its adjusted count, capped by detect.max_adjusted_count): the traffic before sampling.
    traces_represented_total: "counter",
    /// Alerts that the sink failed to deliver.
    alert_delivery_failures_total: "counter",
    /// Messages consumed from the Kafka input topic.
    kafka_messages_total: "counter",
    /// Kafka input messages that could not be decoded (skipped, logged with partition and offset).
    kafka_malformed_messages_total: "counter",
    /// Malformed messages copied to the dead-letter topic.
    kafka_dead_letters_total: "counter",
    /// Offset commits of settled Kafka input messages.
    kafka_commits_total: "counter",
    /// Unix seconds since which the alert sink has been failing to deliver (0: delivering).
    alert_sink_failing_since_seconds: "gauge",
    /// Delivery attempts of the alert sink that failed and were retried.
    alert_sink_retries_total: "counter",
    /// Alerts held in the alert spool on disk, waiting for the broker.
    alert_spool_alerts: "gauge",
    /// Bytes of the alert spool on disk.
    alert_spool_bytes: "gauge",
    /// Spans waiting in the queue to the engine.
    queue_spans: "gauge",
    /// Findings dropped by the tuning (overrides, allowlists, detectors off).
    findings_suppressed_total: "counter",
    /// Tuning file reloads that took effect.
    tuning_reloads_total: "counter",
    /// Tuning file edits refused (the previous tuning stayed in force).
    tuning_reload_failures_total: "counter",
    /// Window partials (closed windows and progress) this engine shipped to the windows topic.
    window_partials_sent_total: "counter",
    /// Window partials this engine received as the group's merger.
    window_partials_received_total: "counter",
    /// Windows this engine merged from the group's partials and judged.
    windows_merged_total: "counter",
    /// Merged windows judged after `kafka.window_merge_timeout` without every partition.
    window_merge_timeouts_total: "counter",
    /// Partials of windows already judged, or repeated: dropped.
    window_partials_dropped_total: "counter",
    /// Baseline snapshots written.
    snapshots_written_total: "counter",
    /// Observations not learned because the baseline store was at its key limit.
    baseline_capped_observations_total: "counter",
    /// Young baselines (under the learning minimum) idle for an hour, evicted from a full
    /// table to make room for new keys.
    baseline_evicted_total: "counter",
    /// Span batches waiting for the engine.
    queue_depth: "gauge",
    /// Spans buffered in traces not yet complete.
    in_flight_spans: "gauge",
    /// Traces not yet complete.
    in_flight_traces: "gauge",
    /// Edges with a learned fan-out baseline.
    edges_tracked: "gauge",
    /// Event-time watermark, Unix seconds.
    watermark_seconds: "gauge",
}

impl Metrics {
    /// Adds `value` to a counter.
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    /// Reads a counter or gauge.
    pub fn get(metric: &AtomicU64) -> u64 {
        metric.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.spans_received_total, 7);
        Metrics::add(&metrics.alerts_emitted[AlertKind::NPlusOne.index()], 1);
        let text = metrics.render();
        assert!(text.contains("# TYPE stormwatch_spans_received_total counter\nstormwatch_spans_received_total 7\n"));
        assert!(text.contains("# HELP stormwatch_queue_depth Span batches waiting for the engine."));
        assert!(text.contains("stormwatch_alerts_emitted_total{kind=\"n_plus_one\"} 1"));
    }

    #[test]
    fn edge_labels_are_escaped() {
        let metrics = Metrics::default();
        metrics.edges.lock().unwrap().push(EdgeSeries {
            from_service: "gate\"way".into(),
            from_operation: "GET /a\\b\nc".into(),
            to_service: "db".into(),
            to_operation: "SELECT 1".into(),
            to_kind: "database".into(),
            calls_per_second: 2.5,
            ..EdgeSeries::default()
        });
        let text = metrics.render();
        let line = "stormwatch_edge_calls_per_second{from_service=\"gate\\\"way\",from_operation=\"GET /a\\\\b\\nc\",\
                    to_service=\"db\",to_operation=\"SELECT 1\",to_kind=\"database\"} 2.5\n";
        assert!(text.contains(line), "{text}");
    }
}

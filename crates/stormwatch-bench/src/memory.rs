//! Bytes per in-flight span and per tracked edge, measured in a fresh process.

use crate::process::status_bytes;
use crate::traffic::generate;
use anyhow::{bail, Context};
use std::process::Stdio;
use std::time::Duration;
use stormwatch_loadgen::Scenario;

/// What `bench-memory` prints.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct MemoryReport {
    pub(crate) in_flight_spans: u64,
    pub(crate) bytes_per_in_flight_span: f64,
    pub(crate) edges: u64,
    pub(crate) bytes_per_edge: f64,
}

pub(crate) async fn memory_report(spans: u64, edges: u64) -> anyhow::Result<MemoryReport> {
    let exe = std::env::current_exe().context("cannot find the stormwatch binary")?;
    let output = tokio::process::Command::new(exe)
        .args(["bench-memory", "--spans", &spans.to_string(), "--edges", &edges.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run the memory probe")?;
    if !output.status.success() {
        bail!("the memory probe failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("the memory probe's report")
}

/// `stormwatch bench-memory`: bytes per in-flight span (decoded loadgen spans buffered in an
/// assembler that never completes them) and per tracked edge (a baseline store with every
/// per-edge table filled), from this process's resident set.
pub fn memory_probe(args: crate::MemoryArgs) -> anyhow::Result<()> {
    use stormwatch_assemble::{Assembler, AssemblerConfig};

    let rss = || status_bytes("self", "VmRSS:").unwrap_or(0);
    let mut scenario =
        Scenario::parse(stormwatch_loadgen::shipped::LARGE_GENERATED).map_err(|e| anyhow::anyhow!("scenario: {e}"))?;
    scenario.duration = Duration::from_secs(24 * 3600);
    let traffic = generate(&scenario, args.spans.max(1_000), 512);
    let forever = u64::MAX / 4;
    let mut assembler = Assembler::new(AssemblerConfig {
        trace_idle_nanos: forever,
        trace_max_wait_nanos: forever,
        max_in_flight_spans: usize::MAX,
        max_future_skew_nanos: forever,
        remembered_traces: 200_000,
    });
    let mut completed = Vec::new();
    // Decode once first so buffers the decoder keeps are not counted.
    let _ = stormwatch_otlp::decode_protobuf(&traffic.batches[0].body)?;
    let before = rss();
    for batch in &traffic.batches {
        for span in stormwatch_otlp::decode_protobuf(&batch.body)?.spans {
            assembler.push(span, &mut completed);
        }
    }
    let in_flight = assembler.in_flight_spans() as u64;
    let per_span = rss().saturating_sub(before) as f64 / in_flight.max(1) as f64;
    anyhow::ensure!(completed.is_empty(), "the probe's assembler completed traces");

    let edges = args.edges.max(1_000);
    let before = rss();
    let store = synthetic_store(edges);
    let per_edge = rss().saturating_sub(before) as f64 / edges as f64;
    let report = MemoryReport {
        in_flight_spans: in_flight,
        bytes_per_in_flight_span: per_span,
        edges: store.edges_tracked() as u64,
        bytes_per_edge: per_edge,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A store with `edges` edges and every per-edge table filled: two days of hourly observations,
/// with the spread real baselines have (calls per parent 1-9, per request 2-12, their time per
/// request 0.3-2.3 ms in microseconds, work per entry request 0.1-0.5 in thousandths, a retry
/// ratio that is mostly zero, an hour-of-day profile). Cache miss ratios exist only for cache
/// fallback edges and are left out. What the memory probe measures, and what the admin-polling
/// runs load.
pub(crate) fn synthetic_store(edges: u64) -> stormwatch_baseline::BaselineStore {
    use stormwatch_baseline::{BaselineStore, WindowMetric};
    use stormwatch_model::{Edge, Node, NodeKind, RootClass, Sym};

    let class = RootClass { service: Sym::new("gateway"), operation: Sym::new("GET /feed"), query_shape: None };
    let mut store = BaselineStore::new(usize::MAX);
    for i in 0..edges {
        let edge = Edge {
            from: Node::service(Sym::new(&format!("service-{}", i / 20)), Sym::new(&format!("GET /op{}", i % 20))),
            to: Node {
                service: Sym::new("postgresql:main"),
                operation: Sym::new(&format!("SELECT * FROM table_{i} WHERE id = ?")),
                kind: NodeKind::Database,
            },
        };
        for k in 0..48u64 {
            let at = 1_800_000_000_000_000_000 + k * 3_600_000_000_000;
            store.observe_fanout(edge, &[1 + (k * 7 + i) % 9], at);
            store.observe_request_edge(class, edge, 2 + (k * 3 + i) % 11, at);
            store.observe_request_work(class, edge, 300 + (k * 37 + i) % 2_000, at);
            store.observe_window_class(class, edge, 900 + (k * 13) % 300, at);
            store.observe_window(WindowMetric::WorkPerEntry, edge, 100 + (k * 17 + i) % 400, at);
            store.observe_window(WindowMetric::RetryRatio, edge, u64::from(k % 24 == 0) * 10, at);
            store.observe_seasonal(WindowMetric::WorkPerEntry, edge, 1_000 + k, at);
        }
    }
    store
}

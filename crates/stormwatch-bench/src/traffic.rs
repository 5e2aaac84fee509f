//! The bench's traffic: a scenario's spans encoded into export requests before the clock starts.

use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use stormwatch_loadgen::{Generator, Scenario};
use stormwatch_otlp::collector::ExportTraceServiceRequest;

/// One pre-encoded export request.
pub(crate) struct Batch {
    pub(crate) body: Bytes,
    pub(crate) spans: u64,
}

/// Encoded traffic and what it is made of.
pub(crate) struct Traffic {
    pub(crate) batches: Vec<Batch>,
    pub(crate) spans: u64,
    pub(crate) traces: u64,
    pub(crate) bytes: u64,
    /// Trace id (hex) -> index of the batch that carries it, for traces a change touched.
    pub(crate) attacked: HashMap<String, usize>,
}

pub(crate) fn generate(scenario: &Scenario, max_spans: u64, batch_spans: usize) -> Traffic {
    let mut generator = Generator::new(scenario);
    let mut traffic = Traffic { batches: Vec::new(), spans: 0, traces: 0, bytes: 0, attacked: HashMap::new() };
    let mut batch = ExportTraceServiceRequest::default();
    let mut in_batch = 0usize;
    let mut trace_batches: Vec<([u8; 16], usize)> = Vec::new();
    for trace in generator.by_ref() {
        if traffic.spans >= max_spans {
            break;
        }
        traffic.spans += trace.spans as u64;
        traffic.traces += 1;
        in_batch += trace.spans;
        trace_batches.push((trace.trace_id, traffic.batches.len()));
        batch.resource_spans.extend(trace.request.resource_spans);
        if in_batch >= batch_spans {
            let body = Bytes::from(std::mem::take(&mut batch).encode_to_vec());
            traffic.bytes += body.len() as u64;
            traffic.batches.push(Batch { body, spans: in_batch as u64 });
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        let body = Bytes::from(batch.encode_to_vec());
        traffic.bytes += body.len() as u64;
        traffic.batches.push(Batch { body, spans: in_batch as u64 });
    }
    let touched: std::collections::HashSet<String> =
        generator.labels().changes.iter().flat_map(|change| change.trace_ids.iter().cloned()).collect();
    for (trace_id, batch) in trace_batches {
        let hex = stormwatch_model::TraceId(trace_id).to_string();
        if touched.contains(&hex) {
            traffic.attacked.insert(hex, batch);
        }
    }
    traffic
}

pub(crate) fn write_binpb(traffic: &Traffic, path: &Path) -> anyhow::Result<()> {
    // One length-prefixed request per batch, as `loadgen -o FILE.binpb` writes them.
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for batch in &traffic.batches {
        out.write_all(&(batch.body.len() as u32).to_be_bytes())?;
        out.write_all(&batch.body)?;
    }
    out.flush()?;
    Ok(())
}

pub(crate) fn spans_sent(batches: &[Batch]) -> u64 {
    batches.iter().map(|b| b.spans).sum()
}

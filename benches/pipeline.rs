//! Pipeline throughput on the recorded Python SDK traffic (7,209 spans), in spans/s:
//!
//! * `decode_json` — OTLP/JSON to model spans, then dropped: the decode-and-drop reference;
//! * `decode_protobuf` — the same requests as protobuf, through the borrowing wire decoder;
//! * `decode_protobuf_prost` — protobuf through prost's generated types, then mapped: what
//!   the wire decoder replaces;
//! * `engine` — assembly, features, detection, learning and throttling of decoded spans;
//! * `decode_and_engine` — both, i.e. everything `replay` does but file reading and output.
//!
//! Run with `cargo bench -p stormwatch-detect --bench pipeline`. Compare `decode_and_engine`
//! with `decode_json` measured in the same run: machines here are noisy, quote medians.

use std::io::{BufRead, BufReader};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use stormwatch_baseline::BaselineStore;
use stormwatch_detect::{Engine, EngineConfig};
use stormwatch_model::Span;

fn fixture_lines() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/python-sdk-flask-sqlite.otlp.jsonl.gz");
    let file = std::fs::File::open(path).expect("fixture");
    BufReader::new(flate2::read::GzDecoder::new(file)).lines().map(|line| line.expect("line")).collect()
}

fn decode(lines: &[String]) -> Vec<Span> {
    lines.iter().flat_map(|line| stormwatch_otlp::decode_json(line.as_bytes()).expect("decodes").spans).collect()
}

/// The fixture as protobuf requests, converted through opentelemetry-proto's serde mapping.
fn fixture_protobuf(lines: &[String]) -> Vec<Vec<u8>> {
    use prost::Message;
    lines
        .iter()
        .map(|line| {
            let request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
                serde_json::from_str(line).expect("OTLP/JSON");
            request.encode_to_vec()
        })
        .collect()
}

fn run_engine(spans: Vec<Span>) -> usize {
    let config = EngineConfig::default();
    let mut engine = Engine::new(config, BaselineStore::new(200_000), || 0);
    let mut alerts = Vec::new();
    engine.push(spans, &mut alerts);
    engine.flush(&mut alerts);
    engine.stats().traces_checked as usize + alerts.len()
}

fn pipeline(c: &mut Criterion) {
    let lines = fixture_lines();
    let spans = decode(&lines);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("decode_json", |b| b.iter(|| decode(std::hint::black_box(&lines)).len()));
    let protobuf = fixture_protobuf(&lines);
    let protobuf_spans: usize =
        protobuf.iter().map(|r| stormwatch_otlp::decode_protobuf(r).expect("decodes").spans.len()).sum();
    assert_eq!(protobuf_spans, spans.len(), "protobuf conversion lost spans");
    group.bench_function("decode_protobuf", |b| {
        b.iter(|| {
            protobuf
                .iter()
                .map(|r| stormwatch_otlp::decode_protobuf(std::hint::black_box(r)).unwrap().spans.len())
                .sum::<usize>()
        })
    });
    group.bench_function("decode_protobuf_prost", |b| {
        use prost::Message;
        b.iter(|| {
            protobuf
                .iter()
                .map(|r| {
                    let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                        std::hint::black_box(r.as_slice()),
                    )
                    .unwrap();
                    stormwatch_otlp::from_request(&request).spans.len()
                })
                .sum::<usize>()
        })
    });
    group.bench_function("engine", |b| b.iter_batched(|| spans.clone(), run_engine, BatchSize::LargeInput));
    group.bench_function("decode_and_engine", |b| b.iter(|| run_engine(decode(std::hint::black_box(&lines)))));
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);

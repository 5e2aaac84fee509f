//! Each stage of the engine on realistic traffic: the built-in `large-generated` scenario
//! (300 services in Alibaba-2021-shaped call graphs, ~40 spans per request, ~345 bytes per
//! span on the wire, real attribute counts), 100,000 spans in export requests of ~512 spans.
//! Throughput is in spans (statements for `normalize`); criterion reports the median.
//!
//! * `decode/protobuf`, `decode/protobuf_prost`, `decode/json` — OTLP to model spans;
//! * `normalize_statement`, `intern` — SQL normalisation, string interning;
//! * `assemble` — spans into completed traces (event-time completion, then a flush);
//! * `features` — edges, calls per parent, cache pairs of each completed trace;
//! * `detect` — the per-trace detectors against trained baselines;
//! * `learn` — baseline updates of every trace;
//! * `windows` — window aggregation and the window detectors;
//! * `correlated_window` — the PCA detector on one window of 64 edges (refits amortised);
//! * `engine` — all of it, as `serve` and `replay` run it.
//!
//! Run with `cargo bench -p stormwatch-detect --bench stages`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use stormwatch_assemble::{Assembler, AssemblerConfig, CompletedTrace};
use stormwatch_baseline::BaselineStore;
use stormwatch_detect::detectors::{detect, learn};
use stormwatch_detect::window::judge_window;
use stormwatch_detect::{extract, DetectConfig, Engine, EngineConfig, TraceFeatures, WindowConfig, Windows};
use stormwatch_loadgen::{Generator, Scenario};
use stormwatch_model::{Span, Sym};
use stormwatch_otlp::collector::ExportTraceServiceRequest;

const SPANS: usize = 100_000;
const BATCH_SPANS: usize = 512;

fn traffic() -> Vec<ExportTraceServiceRequest> {
    let scenario = Scenario::parse(stormwatch_loadgen::shipped::LARGE_GENERATED).expect("scenario");
    let mut requests = Vec::new();
    let mut batch = ExportTraceServiceRequest::default();
    let (mut in_batch, mut total) = (0, 0);
    for trace in Generator::new(&scenario) {
        in_batch += trace.spans;
        total += trace.spans;
        batch.resource_spans.extend(trace.request.resource_spans);
        if in_batch >= BATCH_SPANS {
            requests.push(std::mem::take(&mut batch));
            in_batch = 0;
        }
        if total >= SPANS {
            break;
        }
    }
    requests.push(batch);
    requests
}

fn assemble(spans: Vec<Span>) -> Vec<CompletedTrace> {
    let mut assembler = Assembler::new(AssemblerConfig::default());
    let mut completed = Vec::new();
    for span in spans {
        assembler.push(span, &mut completed);
    }
    assembler.flush(&mut completed);
    completed
}

#[allow(clippy::too_many_lines)] // one criterion group per stage, read top to bottom
fn stages(c: &mut Criterion) {
    let requests = traffic();
    let protobuf: Vec<Vec<u8>> = requests.iter().map(|r| r.encode_to_vec()).collect();
    let json: Vec<String> = requests.iter().map(|r| serde_json::to_string(r).expect("OTLP/JSON")).collect();
    let spans: Vec<Span> =
        protobuf.iter().flat_map(|r| stormwatch_otlp::decode_protobuf(r).expect("decodes").spans).collect();
    let count = spans.len() as u64;
    let statements: Vec<String> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .flat_map(|s| &s.attributes)
        .filter(|kv| kv.key == "db.query.text")
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(text) => Some(text.clone()),
            _ => None,
        })
        .collect();
    let names: Vec<String> = spans.iter().map(|s| s.operation.as_str().to_string()).collect();
    let completed = assemble(spans.clone());
    let features: Vec<TraceFeatures> = completed.iter().map(extract).collect();
    let config = DetectConfig { learning_min_samples: 20, ..DetectConfig::default() };
    let mut trained = BaselineStore::new(200_000);
    for f in &features {
        let (_, anomalies) = detect(f, &trained, &config);
        learn(f, &mut trained, &config, &anomalies);
    }

    let mut group = c.benchmark_group("stages");
    group.sample_size(20);
    group.throughput(Throughput::Elements(count));
    group.bench_function("decode/protobuf", |b| {
        b.iter(|| protobuf.iter().map(|r| stormwatch_otlp::decode_protobuf(r).unwrap().spans.len()).sum::<usize>())
    });
    group.bench_function("decode/protobuf_prost", |b| {
        b.iter(|| {
            protobuf
                .iter()
                .map(|r| {
                    stormwatch_otlp::from_request(&ExportTraceServiceRequest::decode(r.as_slice()).unwrap()).spans.len()
                })
                .sum::<usize>()
        })
    });
    group.bench_function("decode/json", |b| {
        b.iter(|| json.iter().map(|r| stormwatch_otlp::decode_json(r.as_bytes()).unwrap().spans.len()).sum::<usize>())
    });
    group.bench_function("intern", |b| {
        b.iter(|| names.iter().map(|n| Sym::new(n)).filter(|s| s.as_str().len() > 3).count())
    });
    group
        .bench_function("assemble", |b| b.iter_batched(|| spans.clone(), |s| assemble(s).len(), BatchSize::LargeInput));
    group.bench_function("features", |b| b.iter(|| completed.iter().map(|t| extract(t).edges.len()).sum::<usize>()));
    group.bench_function("detect", |b| {
        b.iter(|| features.iter().map(|f| detect(f, &trained, &config).0.len()).sum::<usize>())
    });
    group.bench_function("learn", |b| {
        b.iter_batched(
            || trained.clone(),
            |mut store| {
                for f in &features {
                    learn(f, &mut store, &config, &Default::default());
                }
                store.edges_tracked()
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("windows", |b| {
        let window = WindowConfig { min_windows: 3, ..WindowConfig::default() };
        b.iter_batched(
            || trained.clone(),
            |mut store| {
                let mut windows = Windows::new(window.clone());
                for f in &features {
                    windows.add(f, false);
                }
                windows.close_all().iter().map(|w| judge_window(w, &mut store, &config, &window).len()).sum::<usize>()
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("engine", |b| {
        b.iter_batched(
            || spans.clone(),
            |spans| {
                let mut engine = Engine::new(EngineConfig::default(), BaselineStore::new(200_000), || 0);
                let mut alerts = Vec::new();
                engine.push(spans, &mut alerts);
                engine.flush(&mut alerts);
                engine.stats().traces_checked
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // The correlated-storm detector, per window: 64 busy edges, fitted, judging and refitting.
    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(1));
    group.bench_function("correlated_window", |b| {
        let edges: Vec<stormwatch_model::Edge> =
            features.iter().flat_map(|f| f.edges.iter().map(|e| e.edge)).take(64).collect();
        let mut seed = 7u64;
        let mut noise = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut rows = move || -> Vec<(stormwatch_model::Edge, f64)> {
            let level = 1.0 + 0.3 * noise();
            edges
                .iter()
                .enumerate()
                .map(|(i, e)| (*e, level * (1.0 + i as f64 * 0.05) * (1.0 + 0.05 * noise())))
                .collect()
        };
        let mut detector = stormwatch_detect::correlated::Correlated::new(Default::default());
        let mut model = None;
        for _ in 0..200 {
            detector.observe(&mut model, &rows(), 1_000, 0, &|_| false);
        }
        b.iter(|| detector.observe(&mut model, &rows(), 1_000, 0, &|_| false).is_some())
    });
    group.finish();

    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(statements.len() as u64));
    group.bench_function("normalize_statement", |b| {
        b.iter(|| statements.iter().map(|s| stormwatch_otlp::normalize_statement(s).len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);

//! The bench commands' arguments.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// `stormwatch bench`: the engine against a reference receiver, per transport.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Scenario whose traffic is sent [default: the built-in large-generated scenario, 300
    /// services in Alibaba-2021-shaped call graphs].
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Spans per run (encoded before the clock starts).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub spans: u64,
    /// Spans per export request (traces are never split).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub batch_spans: usize,
    /// Concurrent client connections.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub connections: usize,
    /// Runs per target; medians are reported.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub runs: usize,
    /// Inputs to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "grpc,http,file")]
    pub transport: Vec<BenchTransport>,
    /// Also measure the Kafka input on this broker: the traffic is written to a new topic of 4
    /// partitions, then consumed by one engine and by two engines in one group.
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka: Option<String>,
    /// Length of the alert-latency run's attack at 70% of the gRPC throughput (0 skips it;
    /// needs grpc), after a warm-up long enough for the attacked entry's baselines to learn
    /// (twice detect.learning_min_samples requests, 3 s at least). Its traffic is encoded
    /// ahead: about 350 bytes per span in memory.
    #[arg(long, value_name = "SECONDS", default_value_t = 12)]
    pub latency_seconds: u64,
    /// Skip the overload run (the engine pinned to one CPU, offered far more than it takes;
    /// its peak RSS is checked against the bound its settings imply).
    #[arg(long)]
    pub no_overload: bool,
    /// Also measure what the admin API costs the engine: an engine tracking 100,000 edges
    /// (loaded from a snapshot) takes the gRPC traffic with and without four clients reading
    /// /api/baselines?limit=1000, /api/graph and /api/alerts every 250 ms, in turns over the
    /// runs; with --latency-seconds, the alert latency both ways too.
    #[arg(long)]
    pub admin_polling: bool,
}

/// How `bench` feeds its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchTransport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP, protobuf.
    Http,
    /// A length-prefixed protobuf file: `stormwatch replay` against a read-and-decode loop.
    File,
}

impl BenchTransport {
    /// The transport's name in the report (`grpc`).
    pub fn as_str(self) -> &'static str {
        match self {
            BenchTransport::Grpc => "grpc",
            BenchTransport::Http => "http",
            BenchTransport::File => "file",
        }
    }
}

/// The decode-and-drop reference receiver `bench` measures against (`stormwatch bench-reference`).
#[derive(Args, Debug)]
pub struct ReferenceArgs {
    /// OTLP/gRPC listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4317")]
    pub otlp_grpc: String,
    /// OTLP/HTTP listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4318")]
    pub otlp_http: String,
    /// Decode this length-prefixed protobuf file and exit instead of serving.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `stormwatch bench-memory`: bytes per in-flight span and per tracked edge.
#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Spans to buffer in flight.
    #[arg(long, value_name = "N", default_value_t = 500_000)]
    pub spans: u64,
    /// Edges to give baselines.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub edges: u64,
}

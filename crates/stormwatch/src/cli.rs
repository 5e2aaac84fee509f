//! The command line: every subcommand and its arguments, with the help text `--help` shows.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use stormwatch_bench::{BenchArgs, MemoryArgs, ReferenceArgs};

#[derive(Parser)]
#[command(
    name = "stormwatch",
    version,
    about = "Catch requests that make your system do far more work behind the front door.",
    long_about = "stormwatch watches the OpenTelemetry traces of a whole system, learns how much work each \
edge of the call graph normally does (calls per parent span, calls per request), and alerts when one \
request fans out far beyond it (N+1 loops, fan-out and request amplification) and when many individually \
normal requests together multiply the load in a window of traffic (aggregate amplification with the entry \
points, clients and users that caused it, retry storms, cache bypass, correlated storms across many edges).\n\n\
Quick start:\n  stormwatch serve                      # OTLP on :4317/:4318, alerts to stdout + stormwatch-alerts.jsonl\n  \
stormwatch replay traces.otlp.jsonl   # recorded OTLP/JSON lines through the same pipeline",
    propagate_version = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STORMWATCH_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the engine: receive OTLP, learn baselines, emit alerts. Runs on embedded defaults.
    #[command(long_about = "Run the engine.\n\nReceives OTLP traces over gRPC (default 127.0.0.1:4317) and HTTP \
(127.0.0.1:4318, POST /v1/traces, protobuf or JSON, gzip), assembles traces on event time, learns per-edge \
baselines and emits alerts: to the Kafka topic stormwatch.alerts when --kafka-brokers is set, otherwise as \
JSON lines to stdout and stormwatch-alerts.jsonl. Baselines are restored from and snapshotted to --models \
(default models/). With --kafka-input it also consumes spans from the Kafka topic otlp_spans (as the \
OpenTelemetry Collector's kafka exporter writes them) in a consumer group, committing offsets once the alerts \
they caused are acknowledged. The admin address (127.0.0.1:9464) serves the web console at / (the live call \
graph, the alert feed, the tuning), /healthz, /readyz, /metrics (Prometheus) and the API under /api/ (baselines, \
alerts, explain, graph, events, tuning, snapshot). Ctrl-C (or SIGTERM) flushes traces, alerts and the \
snapshot within server.shutdown_timeout (30 s): alerts a broker that is down has not confirmed by then wait in \
the spool for the next start; a second Ctrl-C exits at once. Every listener bounds its connections, request heads \
and bodies ([server] max_connections, header_timeout, idle_timeout, body_timeout, max_receiving_bytes) and \
answers only the hosts it serves (addresses, localhost, server.allowed_hosts).\n\nSettings come from embedded defaults < --config FILE < environment < flags; \
`stormwatch serve --print-config` shows the result.")]
    Serve(ServeArgs),
    /// Feed recorded OTLP files through the same pipeline, as fast as possible.
    #[command(long_about = "Replay recorded traces through the same pipeline as serve, on event time, as fast \
as the machine allows. Reads OTLP/JSON lines (the OpenTelemetry Collector file exporter's format, one \
ExportTraceServiceRequest per line) and OTLP protobuf files, gzip-compressed or not. Alerts go to stdout as \
JSON lines (or to Kafka with --kafka-brokers); progress and a summary go to stderr.\n\nA replay starts with \
empty baselines and learns from the files, so replaying a file twice gives the same alerts. With --models DIR \
it starts from that snapshot and writes the learned baselines back at the end.")]
    Replay(ReplayArgs),
    /// Generate synthetic traffic with labelled attacks from a scenario file, as OTLP files.
    #[command(long_about = "Generate the traffic a scenario describes (tests/scenarios/*.toml): its topology, rate \
and entry mix, and its labelled changes — attacks and legitimate changes — on simulated event time, \
deterministic for the scenario's seed. Writes OTLP/JSON lines (.jsonl, optionally .gz) or length-prefixed OTLP \
protobuf (.binpb), which `stormwatch replay` and the OpenTelemetry Collector file receiver read, and the ground \
truth (which traces each change touched) to a labels JSON file.\n\nWith --send grpc://HOST:PORT or \
http://HOST:PORT it load-tests a running engine instead: batches are encoded ahead by a generator thread and sent \
over --connections at --rate spans/s, with the achieved rate shown every second; refusals (UNAVAILABLE / 503) \
are retried with backoff and counted.")]
    Loadgen(LoadgenArgs),
    /// Score the detectors on a labelled scenario: detected or missed, time to detect, false alerts.
    #[command(long_about = "Run a scenario through the engine in process (the same engine as replay: OTLP \
protobuf decode, assembly, baselines, detectors) and score its alerts against the scenario's labels: per change, \
detected or missed (attacks) or quiet (legitimate changes), time to detect in event time, whether an exemplar is \
a labelled trace, and false alerts per hour of normal traffic by severity. Prints a table, writes an SVG of every \
detector's alert scores over time with the change windows shaded, and exits non-zero when an expectation is not \
met. Attacks whose detector does not exist yet are declared expected_to_fail in the scenario and reported as \
xfail.")]
    Eval(EvalArgs),
    /// Measure end-to-end throughput against a decode-and-drop reference, memory, alert latency.
    #[command(long_about = "Measure the engine end to end, as a ratio to a decode-and-drop reference measured \
in the same run on the same traffic.\n\nEncodes --spans spans of loadgen traffic (the built-in large-generated \
scenario unless --scenario), then for each --transport and each of --runs runs starts, as child processes of this \
binary, the reference (a tonic + prost TraceService and an axum POST /v1/traces that decode each request and drop \
it, same runtime settings) and the engine (`serve` with a throwaway models directory), sends them everything \
over --connections connections as fast as they take it, and reports spans/s, CPU microseconds per span and peak \
RSS of each child, and the engine/reference ratio (medians). `file` compares `stormwatch replay` of a protobuf \
file with reading and decoding it. Then: bytes per in-flight span and per tracked edge, and alert latency \
(last span acknowledged -> alert written) at 70% of the engine's gRPC throughput with event time at wall-clock \
speed (always on the built-in scenario, whose bff entry it attacks). With --kafka HOST:PORT, also the Kafka \
input: the traffic in a new 4-partition topic, consumed by one engine and by two in one group.\n\nLinux only (reads /proc). Build with --release: `cargo run --release -- bench`.")]
    Bench(BenchArgs),
    /// Inspect what the engine learned: list baselines, show an edge's, diff two snapshots.
    #[command(long_about = "Inspect the learned baselines: per edge, calls per parent span; per entry point \
and edge, calls per request; per entry point, spans, database calls and services per request; per edge and \
window, calls per entry request, retry and cache-miss ratios. Each with its median, p99, p99.9, sample count \
and first observation.\n\nFrom a running engine with --engine http://ADMIN (the admin API's /api/baselines), \
or offline from a models directory (--models, default models/) or a snapshot file (--snapshot). Tables by \
default, JSON with --json.\n\nExamples:\n  stormwatch baseline list --engine http://127.0.0.1:9464 --to-kind database \
--sort p99\n  stormwatch baseline show 'reviews `GET /reviews`'\n  stormwatch baseline diff old/models models")]
    Baseline(BaselineArgs),
    /// (internal) The decode-and-drop reference servers `bench` compares with.
    #[command(hide = true, name = "bench-reference")]
    BenchReference(ReferenceArgs),
    /// (internal) Memory per in-flight span and per tracked edge, for `bench`.
    #[command(hide = true, name = "bench-memory")]
    BenchMemory(MemoryArgs),
}

#[derive(Args)]
pub(crate) struct BaselineArgs {
    #[command(subcommand)]
    pub command: BaselineCommand,
}

#[derive(Subcommand)]
pub(crate) enum BaselineCommand {
    /// Baselines, most learned first (or by --sort).
    List {
        #[command(flatten)]
        source: BaselineSource,
        #[command(flatten)]
        filter: BaselineFilter,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Every baseline whose edge or entry contains TEXT (e.g. "reviews `GET /reviews` -> postgresql").
    Show {
        #[arg(value_name = "TEXT")]
        edge: String,
        #[command(flatten)]
        source: BaselineSource,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write the learned baselines out (a snapshot document), from an engine or a models directory.
    Export {
        /// A running engine's admin API.
        #[arg(long, value_name = "URL")]
        engine: Option<String>,
        /// Offline: the models directory.
        #[arg(long, value_name = "DIR", default_value = "models")]
        models: PathBuf,
        /// Write here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Replace the learned baselines with a snapshot (validated first): on a running engine, or
    /// in a models directory whose engine is stopped.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        target: TuningTarget,
    },
    /// Why an alert fired: its numbers, the rule, the baselines of its edge now, the tuning.
    Explain {
        /// The alert's id or fingerprint.
        #[arg(value_name = "ALERT")]
        alert: String,
        /// A running engine's admin API (it keeps its last 1,000 alerts).
        #[arg(long, value_name = "URL", conflicts_with = "alerts")]
        engine: Option<String>,
        /// Offline: an alerts file (JSON lines), with the baselines and tuning of --models.
        #[arg(long, value_name = "FILE")]
        alerts: Option<PathBuf>,
        /// Offline: the models directory.
        #[arg(long, value_name = "DIR", default_value = "models")]
        models: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Override how findings are judged: on an edge, an entry point or a detector (or all).
    Set {
        /// The edge, as alerts name it: caller `operation` -> callee `operation`.
        #[arg(long, value_name = "EDGE")]
        edge: Option<String>,
        /// The entry point, as alerts name it: service `operation`.
        #[arg(long, value_name = "ENTRY")]
        entry: Option<String>,
        /// Only this detector's findings (n_plus_one, aggregate_amplification, ...).
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// Alert only above the learned threshold times this.
        #[arg(long, value_name = "FACTOR")]
        threshold_factor: Option<f64>,
        /// Alert only above this absolute value (the alert's unit).
        #[arg(long, value_name = "VALUE")]
        limit: Option<f64>,
        /// Alert only once the baseline has this many samples.
        #[arg(long, value_name = "N")]
        min_samples: Option<u64>,
        /// info, warning or critical.
        #[arg(long, value_name = "SEVERITY")]
        severity: Option<String>,
        /// Drop the findings it matches.
        #[arg(long)]
        disable: bool,
        #[command(flatten)]
        target: TuningTarget,
    },
    /// Stop learning an edge (its baseline stays as it is), or with --all every baseline.
    Freeze {
        #[arg(value_name = "EDGE", required_unless_present = "all", conflicts_with = "all")]
        edge: Option<String>,
        /// Every baseline.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: TuningTarget,
    },
    /// Learn an edge again, or with --all lift the global freeze.
    Unfreeze {
        #[arg(value_name = "EDGE", required_unless_present = "all", conflicts_with = "all")]
        edge: Option<String>,
        /// Every baseline.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: TuningTarget,
    },
    /// Put a detector in shadow mode (judged and counted, never emitted), or back on, or off.
    Shadow {
        #[arg(value_name = "KIND")]
        kind: String,
        /// on, shadow or off.
        #[arg(long, value_name = "MODE", default_value = "shadow")]
        mode: String,
        #[command(flatten)]
        target: TuningTarget,
    },
    /// Allow a legitimate amplifier (a batch job, a partner) until a time.
    Allow {
        /// The entry point, as alerts name it: service `operation`.
        #[arg(long, value_name = "ENTRY", required_unless_present_any = ["clients", "user"])]
        entry: Option<String>,
        /// A client population, as alerts name it (10.1.0.0/16).
        #[arg(long, value_name = "CIDR")]
        clients: Option<String>,
        /// An authenticated user (enduser.id).
        #[arg(long, value_name = "ID")]
        user: Option<String>,
        /// RFC 3339 time it expires, e.g. 2027-01-31T00:00:00Z.
        #[arg(long, value_name = "TIME")]
        until: String,
        #[command(flatten)]
        target: TuningTarget,
    },
    /// What changed between two snapshots (files or models directories): baselines new, gone,
    /// or whose median, p99 or p99.9 moved.
    Diff {
        #[arg(value_name = "BEFORE")]
        before: PathBuf,
        #[arg(value_name = "AFTER")]
        after: PathBuf,
        /// JSON instead of a table (every change).
        #[arg(long)]
        json: bool,
        /// Changes shown in the table.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
    },
}

/// Where a tuning change goes: a running engine's admin API, or the tuning file itself.
#[derive(Args)]
pub(crate) struct TuningTarget {
    /// A running engine's admin API, e.g. http://127.0.0.1:9464 (it applies the change at once).
    #[arg(long, value_name = "URL")]
    pub engine: Option<String>,
    /// The admin token for --engine [default: env STORMWATCH_ADMIN_TOKEN, else MODELS/admin.token].
    #[arg(long, value_name = "TOKEN", env = "STORMWATCH_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Models directory whose tuning.toml is edited without --engine (a running engine reloads it).
    #[arg(long, value_name = "DIR", default_value = "models")]
    pub models: PathBuf,
    /// Who makes the change, for the audit trail [default: $USER].
    #[arg(long, value_name = "NAME")]
    pub who: Option<String>,
    /// Why (kept beside the change).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

/// Where baselines are read from.
#[derive(Args)]
pub(crate) struct BaselineSource {
    /// A running engine's admin API, e.g. http://127.0.0.1:9464.
    #[arg(long, value_name = "URL", conflicts_with = "snapshot")]
    pub engine: Option<String>,
    /// Models directory of an engine (offline).
    #[arg(long, value_name = "DIR", default_value = "models")]
    pub models: PathBuf,
    /// A snapshot file (offline), instead of --models.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
}

/// Which baselines, in which order.
#[derive(Args)]
pub(crate) struct BaselineFilter {
    /// Only baselines whose caller, callee or entry is this service (or database, cache, ...).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Only edges to this kind of node: service, database, cache, queue, peer.
    #[arg(long, value_name = "KIND")]
    pub to_kind: Option<String>,
    /// Only this table (calls_per_parent, calls_per_request, per_request, window, window_share).
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// Only baselines whose edge or entry contains this text.
    #[arg(long = "match", value_name = "TEXT")]
    pub matching: Option<String>,
    /// Order, descending: samples, p99, median, since, score (the last window against the
    /// p99; window rows of a running engine).
    #[arg(long, value_name = "KEY", default_value = "samples")]
    pub sort: String,
    /// Rows shown.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
}

#[derive(Args)]
pub(crate) struct LoadgenArgs {
    /// Scenario file (TOML).
    #[arg(value_name = "SCENARIO")]
    pub scenario: PathBuf,
    /// Output file: .jsonl / .jsonl.gz (OTLP/JSON lines) or .binpb (length-prefixed protobuf).
    #[arg(long, short, value_name = "FILE", required_unless_present = "send", conflicts_with = "send")]
    pub output: Option<PathBuf>,
    /// Send to a running engine instead: grpc://HOST:PORT or http://HOST:PORT.
    #[arg(long, value_name = "ENDPOINT")]
    pub send: Option<String>,
    /// With --send: target rate, in --rate-unit per second (0: as fast as the receiver takes them).
    #[arg(long, value_name = "PER_SEC", default_value_t = 10_000.0)]
    pub rate: f64,
    /// With --send: what --rate counts.
    #[arg(long, value_enum, default_value_t = RateUnit::Spans)]
    pub rate_unit: RateUnit,
    /// With --send: concurrent connections.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub connections: usize,
    /// With --send: spans per export request (traces are never split).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub batch_spans: usize,
    /// Labels file [default: beside the output file, <name>.labels.json; with --send, none].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// No progress output on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What a load-test rate counts.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RateUnit {
    Spans,
    Requests,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Scenario file (TOML).
    #[arg(value_name = "SCENARIO")]
    pub scenario: PathBuf,
    /// Where to write the picture [default: <scenario name>.eval.svg].
    #[arg(long, value_name = "FILE")]
    pub picture: Option<PathBuf>,
    /// Also write every alert as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
    /// Also write the labels (ground truth) to this file.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// What-if: apply this tuning file (models/tuning.toml format) and see how the detections change.
    #[arg(long, value_name = "FILE")]
    pub tuning: Option<PathBuf>,
    /// No progress output on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Settings shared by serve and replay.
#[derive(Args, Clone, Default)]
pub(crate) struct CommonArgs {
    /// TOML configuration file (see `serve --print-config` for every field).
    #[arg(long, value_name = "FILE", env = "STORMWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap brokers; alerts go to Kafka instead of stdout and the alerts file.
    #[arg(long, value_name = "HOST:PORT,...", env = "STORMWATCH_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Kafka topic for alerts, created at start when missing [default: stormwatch.alerts].
    #[arg(long, value_name = "TOPIC", env = "STORMWATCH_ALERT_TOPIC")]
    pub alert_topic: Option<String>,
    /// Observations a baseline needs before it may alert [default: 200].
    #[arg(long, value_name = "N", env = "STORMWATCH_LEARNING_MIN_SAMPLES")]
    pub learning_min_samples: Option<u64>,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, value_name = "ADDR", env = "STORMWATCH_OTLP_GRPC")]
    pub otlp_grpc: Option<String>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318].
    #[arg(long, value_name = "ADDR", env = "STORMWATCH_OTLP_HTTP")]
    pub otlp_http: Option<String>,
    /// Admin HTTP listen address: the web console, /healthz, /metrics and the API [default:
    /// 127.0.0.1:9464]. Off loopback, API reads need the admin token too.
    #[arg(long, value_name = "ADDR", env = "STORMWATCH_ADMIN")]
    pub admin: Option<String>,
    /// Directory of the baseline snapshot [default: models].
    #[arg(long, value_name = "DIR", env = "STORMWATCH_MODELS")]
    pub models: Option<PathBuf>,
    /// Without Kafka: file alerts are appended to as JSON lines ("" disables)
    /// [default: stormwatch-alerts.jsonl].
    #[arg(long, value_name = "FILE", env = "STORMWATCH_ALERTS_FILE")]
    pub alerts_file: Option<String>,
    /// Also consume spans from Kafka (kafka.input_topic, default otlp_spans, as the
    /// OpenTelemetry Collector's kafka exporter writes them) in consumer group kafka.group_id;
    /// offsets are committed once the spans' alerts are acknowledged. Needs --kafka-brokers.
    #[arg(long, env = "STORMWATCH_KAFKA_INPUT")]
    pub kafka_input: bool,
    /// This engine's static id in the consumer group (kafka.instance_id, e.g. the pod name of a
    /// StatefulSet): restarted with the same id it takes its partitions back at once, and its
    /// shared windows and snapshots are recognised as its own.
    #[arg(long, value_name = "ID", env = "STORMWATCH_KAFKA_INSTANCE_ID")]
    pub kafka_instance_id: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// OTLP/JSON lines (.jsonl) or protobuf (.pb/.binpb) files, optionally gzip-compressed.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Start from the baseline snapshot in DIR and write the learned baselines back to it.
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// Apply this tuning file (overrides, shadow modes, allowlists, freezes) [default: DIR/tuning.toml
    /// with --models].
    #[arg(long, value_name = "FILE")]
    pub tuning: Option<PathBuf>,
    /// Also append alerts to this file as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub alerts_file: Option<PathBuf>,
    /// Do not write alerts to stdout (with --alerts-file or Kafka).
    #[arg(long)]
    pub no_stdout: bool,
    /// No progress output on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

//! Configuration: embedded defaults < TOML file (`--config`) < environment < flags.
//! Every field is documented here (`[server]` in `config/server.rs`, `[detect]` in
//! `config/detect.rs`), every default lives beside its field, and [`Config::validate`] runs
//! once at start with errors that name the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stormwatch_assemble::AssemblerConfig;
use stormwatch_detect::{DetectConfig, EngineConfig};

/// Returns [`ConfigError::Invalid`] with a message that names the setting.
macro_rules! invalid {
    ($($message:tt)*) => {
        return Err(ConfigError::Invalid(format!($($message)*)))
    };
}

mod detect;
mod server;

pub use detect::DetectSection;
pub use server::ServerConfig;

/// Why a configuration cannot run: each error names the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or names a setting that does not exist.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML reader said, with the line.
        message: String,
    },
    /// A setting is out of its range: the message names it and the range.
    #[error("{0}")]
    Invalid(String),
    /// `attribution.trusted_proxies` holds something that is not an address range.
    #[error("attribution.trusted_proxies: {0}")]
    TrustedProxies(#[from] stormwatch_otlp::client::RangeError),
    /// `[server.tls]`'s files do not make a TLS configuration.
    #[error("server.tls: {0}")]
    Tls(#[from] stormwatch_io::tls::TlsError),
}

/// The configuration file (`--config`, TOML), one section per table; every setting has a
/// default, so an empty file (or none) runs the engine. `serve --print-config` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listeners and their bounds.
    pub server: ServerConfig,
    /// `[kafka]`: brokers, topics and the consumer group.
    pub kafka: KafkaConfig,
    /// `[output]`: alerts without Kafka, and the spool.
    pub output: OutputConfig,
    /// `[assemble]`: trace assembly.
    pub assemble: AssembleConfig,
    /// `[baseline]`: learning and the snapshot.
    pub baseline: BaselineConfig,
    /// `[detect]`: thresholds and windows.
    pub detect: DetectSection,
    /// `[limits]`: cardinality bounds on names.
    pub limits: LimitsConfig,
    /// `[attribution]`: who sent a request.
    pub attribution: AttributionConfig,
}

/// Who sent a request: the real client behind the proxies (see [`stormwatch_otlp::client`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Address ranges (`10.0.0.0/8`, `fd00::/8`, or one address) of the proxies and load
    /// balancers in front of the services: the forwarding headers an entry span captured
    /// (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) are believed only when its network peer
    /// is one of them, and the client is the rightmost address in them that is not. Default:
    /// loopback, the private ranges, carrier-grade NAT and IPv6 unique local addresses. Empty:
    /// never believe a forwarding header.
    pub trusted_proxies: Vec<String>,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            trusted_proxies: stormwatch_otlp::client::DEFAULT_TRUSTED_PROXIES.iter().map(|r| r.to_string()).collect(),
        }
    }
}

impl AttributionConfig {
    fn trusted(&self) -> Result<stormwatch_otlp::TrustedProxies, ConfigError> {
        Ok(stormwatch_otlp::TrustedProxies::parse(&self.trusted_proxies)?)
    }

    /// Sets the process-wide trusted proxies the decoders read clients with.
    pub fn apply(&self) -> Result<(), ConfigError> {
        self.trusted()?.set_global();
        Ok(())
    }
}

/// Most distinct names kept per dimension, and most bytes they may take. New names past a
/// limit become `<overflow>`, are counted (`stormwatch_cardinality_overflow_total`), and for all
/// but clients and users raise one `cardinality_flood` alert: memory stays bounded whatever the
/// traffic invents. (Each name is also cut to its dimension's length, see
/// [`stormwatch_model::Dimension::max_name_bytes`].)
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `service.name` values.
    pub services: usize,
    /// Span names and routes.
    pub operations: usize,
    /// Normalised database and cache statements.
    pub statements: usize,
    /// Database systems and namespaces, queues, peer hosts.
    pub peers: usize,
    /// Entry query shapes.
    pub query_shapes: usize,
    /// Client populations (/16, /64) of entry requests.
    pub clients: usize,
    /// `enduser.id` values of entry requests.
    pub users: usize,
    /// Bytes the service names may take in all (32 bytes of bookkeeping each included; so
    /// for each dimension below).
    pub services_bytes: usize,
    /// Bytes the operation names may take in all.
    pub operations_bytes: usize,
    /// Bytes the normalised statements may take in all.
    pub statements_bytes: usize,
    /// Bytes the peer names may take in all.
    pub peers_bytes: usize,
    /// Bytes the query shapes may take in all.
    pub query_shapes_bytes: usize,
    /// Bytes the client populations may take in all.
    pub clients_bytes: usize,
    /// Bytes the user ids may take in all.
    pub users_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use stormwatch_model::Dimension;
        LimitsConfig {
            services: Dimension::Service.default_limit(),
            operations: Dimension::Operation.default_limit(),
            statements: Dimension::Statement.default_limit(),
            peers: Dimension::Peer.default_limit(),
            query_shapes: Dimension::QueryShape.default_limit(),
            clients: Dimension::Client.default_limit(),
            users: Dimension::User.default_limit(),
            services_bytes: Dimension::Service.default_byte_limit(),
            operations_bytes: Dimension::Operation.default_byte_limit(),
            statements_bytes: Dimension::Statement.default_byte_limit(),
            peers_bytes: Dimension::Peer.default_byte_limit(),
            query_shapes_bytes: Dimension::QueryShape.default_byte_limit(),
            clients_bytes: Dimension::Client.default_byte_limit(),
            users_bytes: Dimension::User.default_byte_limit(),
        }
    }
}

impl LimitsConfig {
    /// (dimension, most names, most bytes).
    fn each(&self) -> [(stormwatch_model::Dimension, usize, usize); 7] {
        use stormwatch_model::Dimension;
        [
            (Dimension::Service, self.services, self.services_bytes),
            (Dimension::Operation, self.operations, self.operations_bytes),
            (Dimension::Statement, self.statements, self.statements_bytes),
            (Dimension::Peer, self.peers, self.peers_bytes),
            (Dimension::QueryShape, self.query_shapes, self.query_shapes_bytes),
            (Dimension::Client, self.clients, self.clients_bytes),
            (Dimension::User, self.users, self.users_bytes),
        ]
    }

    /// Sets the process-wide limits the decoders intern under.
    pub fn apply(&self) {
        for (dimension, limit, bytes) in self.each() {
            stormwatch_model::Cardinality::global().set_limit(dimension, limit);
            stormwatch_model::Cardinality::global().set_byte_limit(dimension, bytes);
        }
    }
}

/// `[kafka]`: Kafka output, input and the sharing of windows in a consumer group.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port,...`. Empty: alerts go to stdout and `output.alerts_file`.
    pub brokers: String,
    /// Topic alerts are produced to (key = fingerprint).
    pub alert_topic: String,
    /// `serve` also consumes spans from `input_topic` (needs `brokers`).
    pub input: bool,
    /// Topic the OpenTelemetry Collector's kafka exporter writes spans to.
    pub input_topic: String,
    /// Its encoding: `otlp_proto` (the exporter's default) or `otlp_json`.
    pub input_encoding: String,
    /// Consumer group of the engines sharing the input topic.
    pub group_id: String,
    /// Malformed input messages are copied here; empty: they are only counted and logged.
    pub dead_letter_topic: String,
    /// Static membership id of this engine in the group (e.g. the pod name of a StatefulSet):
    /// restarted with the same id it takes its partitions back at once. Empty: dynamic.
    pub instance_id: String,
    /// With `input`: the engines of the group ship their closed windows to `windows_topic`;
    /// the engine holding it merges and judges them, so an attack spread over every partition
    /// is seen whole. `false`: each engine judges only its own share of the traffic.
    pub share_windows: bool,
    /// The group's internal topic of window partials (one partition, created when missing).
    /// Empty: `<group_id>.windows`, so groups never mix.
    pub windows_topic: String,
    /// With `input`: every engine publishes its baseline snapshot to `baselines_topic`
    /// (compacted, keyed by engine); a new engine without a local snapshot starts from the
    /// newest, and a new window merger from the previous merger's window baselines.
    pub share_baselines: bool,
    /// The group's compacted topic of baseline snapshots (created when missing). Empty:
    /// `<group_id>.baselines`.
    pub baselines_topic: String,
    /// librdkafka properties for every Kafka client of the engine, passed unchanged: SASL and
    /// SSL (`security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location`, ...), timeouts, rack. What a client's role needs (acks, idempotence,
    /// group settings) is set after them. `--print-config` hides values of keys that look secret.
    pub client: std::collections::BTreeMap<String, String>,
    /// How long a merged window waits for a partition no live engine accounts for (its engine
    /// died and Kafka has not reassigned it yet) before it is judged without it.
    #[serde(with = "humantime_serde")]
    pub window_merge_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            alert_topic: stormwatch_io::kafka::DEFAULT_ALERT_TOPIC.into(),
            input: false,
            input_topic: stormwatch_io::kafka::source::DEFAULT_INPUT_TOPIC.into(),
            input_encoding: "otlp_proto".into(),
            group_id: stormwatch_io::kafka::source::DEFAULT_GROUP_ID.into(),
            dead_letter_topic: String::new(),
            instance_id: String::new(),
            share_windows: true,
            windows_topic: String::new(),
            window_merge_timeout: Duration::from_secs(30),
            client: std::collections::BTreeMap::new(),
            share_baselines: true,
            baselines_topic: String::new(),
        }
    }
}

/// `[output]`: where alerts go without Kafka, and the spool with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Without Kafka: write alerts as JSON lines to stdout.
    pub stdout: bool,
    /// Without Kafka: append alerts as JSON lines to this file. Empty disables it.
    pub alerts_file: String,
    /// With Kafka: where alerts the broker does not take wait, on disk, so the engine keeps
    /// judging through an outage and a restart delivers them. Empty: `<models_dir>/alert-spool`.
    pub spool_dir: PathBuf,
    /// Most bytes the spool holds; once full, back-pressure reaches the inputs.
    pub spool_max_bytes: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            stdout: true,
            alerts_file: "stormwatch-alerts.jsonl".into(),
            spool_dir: PathBuf::new(),
            spool_max_bytes: 1 << 30,
        }
    }
}

/// `[assemble]`: how spans become traces.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssembleConfig {
    /// Event time a trace must be quiet (after its root arrived) to complete.
    #[serde(with = "humantime_serde")]
    pub trace_idle: Duration,
    /// Longest a trace is buffered, root or not.
    #[serde(with = "humantime_serde")]
    pub trace_max_wait: Duration,
    /// Most spans buffered at once; past it the oldest traces complete as incomplete. Size it
    /// for spans/s x (trace_idle + the longest trace): about 136 bytes each (`stormwatch
    /// bench`), so the default is about 820 MB at most, enough for 1M spans/s.
    pub max_in_flight_spans: usize,
}

impl Default for AssembleConfig {
    fn default() -> Self {
        let defaults = AssemblerConfig::default();
        AssembleConfig {
            trace_idle: Duration::from_nanos(defaults.trace_idle_nanos),
            trace_max_wait: Duration::from_nanos(defaults.trace_max_wait_nanos),
            max_in_flight_spans: defaults.max_in_flight_spans,
        }
    }
}

/// `[baseline]`: what is learned and where it is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Where the baseline snapshot (`baselines.json`) is written and restored from.
    pub models_dir: PathBuf,
    /// Observations a baseline needs before it may alert.
    pub learning_min_samples: u64,
    /// How often the snapshot is written while serving (also written on shutdown).
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Most baseline keys per table (edges, root class x edge, root class x total).
    pub max_keys: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            models_dir: PathBuf::from("models"),
            learning_min_samples: DetectConfig::default().learning_min_samples,
            snapshot_interval: Duration::from_secs(60),
            max_keys: 200_000,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown fields and bad values are errors that name the field.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|error| ConfigError::Parse { path: path.to_path_buf(), message: error.to_string() })
    }

    /// Checks every field once; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.attribution.trusted()?;
        if self.output.spool_max_bytes == 0 {
            invalid!("output.spool_max_bytes: must be at least 1");
        }
        self.assemble.validate()?;
        if self.baseline.snapshot_interval.is_zero() {
            invalid!("baseline.snapshot_interval: must be longer than zero");
        }
        if self.baseline.max_keys == 0 {
            invalid!("baseline.max_keys: must be at least 1");
        }
        self.limits.validate()?;
        self.detect.validate()?;
        self.kafka.validate()
    }

    /// The windows topic when engines share windows (Kafka input), else `None`.
    pub fn windows_topic(&self) -> Option<String> {
        let kafka = &self.kafka;
        match (kafka.input && kafka.share_windows, kafka.windows_topic.is_empty()) {
            (false, _) => None,
            (true, true) => Some(format!("{}.windows", kafka.group_id)),
            (true, false) => Some(kafka.windows_topic.clone()),
        }
    }

    /// The baselines topic when engines share baselines (Kafka input), else `None`.
    pub fn baselines_topic(&self) -> Option<String> {
        let kafka = &self.kafka;
        match (kafka.input && kafka.share_baselines, kafka.baselines_topic.is_empty()) {
            (false, _) => None,
            (true, true) => Some(format!("{}.baselines", kafka.group_id)),
            (true, false) => Some(kafka.baselines_topic.clone()),
        }
    }

    /// The engine's settings, from the `[assemble]`, `[baseline]` and `[detect]` sections.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            assemble: AssemblerConfig {
                trace_idle_nanos: self.assemble.trace_idle.as_nanos() as u64,
                trace_max_wait_nanos: self.assemble.trace_max_wait.as_nanos() as u64,
                max_in_flight_spans: self.assemble.max_in_flight_spans,
                ..AssemblerConfig::default()
            },
            detect: DetectConfig {
                learning_min_samples: self.baseline.learning_min_samples,
                quantile: self.detect.quantile,
                ratio: self.detect.ratio,
                min_excess: self.detect.min_excess,
                critical_factor: self.detect.critical_factor,
                false_alarm_rate: self.detect.false_alarm_rate,
                min_excess_work_ms: self.detect.min_excess_work.as_secs_f64() * 1_000.0,
                min_excess_bytes: self.detect.min_excess_bytes as f64,
                min_excess_rows: self.detect.min_excess_rows as f64,
            },
            throttle_nanos: self.detect.throttle.as_nanos() as u64,
            window: stormwatch_detect::WindowConfig {
                window_nanos: self.detect.window.as_nanos() as u64,
                // Traces complete up to trace_idle after their last span.
                close_delay_nanos: (self.assemble.trace_idle + Duration::from_secs(1)).as_nanos() as u64,
                min_entry_requests: self.detect.window_min_requests,
                min_excess: self.detect.window_min_excess,
                min_windows: self.detect.window_min_windows,
                max_adjusted_count: self.detect.max_adjusted_count,
                min_excess_work_micros: self.detect.window_min_excess_work.as_micros() as u64,
                min_excess_bytes: self.detect.window_min_excess_bytes,
                min_excess_rows: self.detect.window_min_excess_rows,
                ..stormwatch_detect::WindowConfig::default()
            },
            correlated: stormwatch_detect::correlated::CorrelatedConfig::default(),
            share_windows: false,
        }
    }
}

impl AssembleConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.trace_idle.is_zero() {
            invalid!("assemble.trace_idle: must be longer than zero");
        }
        if self.trace_max_wait < self.trace_idle {
            invalid!(
                "assemble.trace_max_wait ({}) must not be shorter than assemble.trace_idle ({})",
                humantime::format_duration(self.trace_max_wait),
                humantime::format_duration(self.trace_idle)
            );
        }
        if self.max_in_flight_spans == 0 {
            invalid!("assemble.max_in_flight_spans: must be at least 1");
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (dimension, limit, bytes) in self.each() {
            if limit == 0 {
                invalid!("limits.{}: must be at least 1", dimension.as_str());
            }
            let smallest = dimension.max_name_bytes() + stormwatch_model::NAME_OVERHEAD;
            if bytes < smallest {
                invalid!(
                    "limits.{}_bytes: must be at least {smallest} (room for one name of the longest kept, {} bytes, \
                     and its bookkeeping), got {bytes}",
                    dimension.as_str(),
                    dimension.max_name_bytes()
                );
            }
        }
        Ok(())
    }
}

impl KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.input {
            if self.brokers.is_empty() {
                invalid!("kafka.input (--kafka-input): needs kafka.brokers (--kafka-brokers) to consume from");
            }
            if self.input_topic.is_empty() || self.group_id.is_empty() {
                invalid!("kafka.input_topic and kafka.group_id: must not be empty with kafka.input");
            }
            if stormwatch_io::kafka::source::InputEncoding::parse(&self.input_encoding).is_none() {
                invalid!(
                    "kafka.input_encoding: {:?} is not otlp_proto or otlp_json (the Collector kafka exporter's encodings)",
                    self.input_encoding
                );
            }
        }
        if !self.brokers.is_empty() && self.alert_topic.is_empty() {
            invalid!("kafka.alert_topic: must not be empty when kafka.brokers is set");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let config = Config::default();
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.server.otlp_grpc, "127.0.0.1:4317");
        assert_eq!(back.assemble.trace_idle, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_field() {
        let error = toml::from_str::<Config>("[server]\notlp_grpcc = \"x\"").unwrap_err().to_string();
        assert!(error.contains("otlp_grpcc"), "{error}");
        let config: Config = toml::from_str("[server]\nadmin = \"nope\"").unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("server.admin"));
        let config: Config = toml::from_str("[assemble]\ntrace_idle = \"10s\"\ntrace_max_wait = \"5s\"").unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("assemble.trace_max_wait"));
        let error = toml::from_str::<Config>("[assemble]\ntrace_idle = \"soon\"").unwrap_err().to_string();
        assert!(error.contains("trace_idle"), "{error}");
    }
}

//! Scenario files: a topology (services, operations and the calls they make, with count
//! distributions, caches, databases, queues, errors and retries), the traffic (rate, entry
//! mix, client population), and labelled changes — attacks that must be detected and
//! legitimate changes that must stay quiet. TOML, `deny_unknown_fields`, validated once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::distribution::Count;

mod validate;

/// A whole scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The scenario's name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Same seed, same traffic, same trace ids.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Event time simulated.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Root requests per second of event time, before changes.
    pub rate: f64,
    /// Distinct client addresses of ordinary traffic.
    #[serde(default = "default_clients")]
    pub clients: u32,
    /// The entry services sit behind a reverse proxy (10.0.0.2): an entry span's network peer
    /// is the proxy, and the client's address is in the captured `X-Forwarded-For` header
    /// (`http.request.header.x-forwarded-for`) instead of `client.address`.
    #[serde(default)]
    pub behind_proxy: bool,
    /// Head sampling, as OpenTelemetry's consistent probability sampler does it: only this
    /// share of the traces is exported (those whose trace id's last 56 bits reach the
    /// threshold), every span carrying the threshold in its `tracestate` (`ot=th:...`). `rate`
    /// is the traffic before sampling. None: every trace is exported, without a `tracestate`.
    #[serde(default)]
    pub sampling: Option<f64>,
    /// Event time of the first request, Unix seconds.
    #[serde(default = "default_start")]
    pub start_unix_seconds: u64,
    /// Where requests enter, with their share of traffic.
    #[serde(default)]
    pub entries: Vec<Entry>,
    /// service -> operation -> behaviour.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<String, Operation>>,
    /// A generated topology added to the explicit services (explicit ones win on a clash).
    #[serde(default)]
    pub generated: Option<crate::topology::GeneratedTopology>,
    /// Attacks and legitimate changes, labelled.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// Engine settings for `eval`, and what `eval` must find.
    #[serde(default)]
    pub eval: EvalSettings,
}

fn default_seed() -> u64 {
    1
}
fn default_clients() -> u32 {
    200
}
fn default_start() -> u64 {
    // 2026-01-05T00:00:00Z: a Monday, so diurnal swings start at midnight.
    1_767_571_200
}

/// An entry point of the traffic and its share.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The entry service.
    pub service: String,
    /// Its operation (method and route).
    pub operation: String,
    /// Its relative share of requests.
    pub weight: f64,
    /// Query-parameter keys the requests carry (values are generated).
    #[serde(default)]
    pub query: Vec<String>,
}

impl Entry {
    /// Whether a change's `entry` names this one: `service operation`, or, to tell apart
    /// entries of one operation, `service operation?key&key` (its query keys, as listed).
    pub fn matches(&self, wanted: &str) -> bool {
        let plain = format!("{} {}", self.service, self.operation);
        wanted == plain || (!self.query.is_empty() && wanted == format!("{plain}?{}", self.query.join("&")))
    }
}

/// What an operation does when called.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// The calls it makes, in order.
    #[serde(default)]
    pub calls: Vec<Call>,
    /// Probability that the operation fails (status ERROR, HTTP 500).
    #[serde(default)]
    pub error_rate: f64,
    /// Own processing time in milliseconds (children add to it).
    #[serde(default = "default_duration_ms")]
    pub duration_ms: f64,
    /// Response payload size in bytes (`http.response.body.size`), e.g. `"uniform(2000,20000)"`.
    #[serde(default)]
    pub response_bytes: Option<Count>,
    /// Request payload size in bytes (`http.request.body.size`).
    #[serde(default)]
    pub request_bytes: Option<Count>,
}

fn default_duration_ms() -> f64 {
    2.0
}

/// One kind of downstream call made by an operation, `count` times per execution.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// Name changes refer to, e.g. `author-lookup`. Defaults to the target.
    #[serde(default)]
    pub name: Option<String>,
    /// An instrumented service's operation: `"catalog GET /items/{id}"`.
    #[serde(default)]
    pub service: Option<String>,
    /// A database, `system:namespace`, e.g. `postgresql:shop`, with `statement`.
    #[serde(default)]
    pub db: Option<String>,
    /// The statement sent to `db` (its literals vary per call).
    #[serde(default)]
    pub statement: Option<String>,
    /// Rows the statement returns (`db.response.returned_rows`); unreported when unset.
    #[serde(default)]
    pub rows: Option<Count>,
    /// A cache system, e.g. `redis`; `on_miss` calls run when the key is not cached.
    #[serde(default)]
    pub cache: Option<String>,
    /// Share of lookups that miss.
    #[serde(default)]
    pub miss_ratio: f64,
    /// Calls run on a miss.
    #[serde(default)]
    pub on_miss: Vec<Call>,
    /// A queue, `system:destination`, e.g. `kafka:orders`.
    #[serde(default)]
    pub queue: Option<String>,
    /// The operation that takes `queue`'s messages, `"worker process-order"`: each message
    /// runs it under a CONSUMER span, exported by the consumer when it is done.
    #[serde(default)]
    pub consumer: Option<String>,
    /// How the consumer's trace names the message's sender.
    #[serde(default)]
    pub delivery: Delivery,
    /// Milliseconds between a message's send and its consumer's start.
    #[serde(default = "Count::default_lag")]
    pub lag_ms: Count,
    /// Calls per execution: `"3"`, `"uniform(1,5)"`, `"poisson(4)"`, `"pareto(1,1.5)"`.
    #[serde(default = "Count::one")]
    pub count: Count,
    /// Retries when the callee fails.
    #[serde(default)]
    pub retries: u32,
}

impl Call {
    /// The name changes use to select this call.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        self.service
            .clone()
            .or_else(|| self.db.as_ref().map(|db| format!("{db} {}", self.statement.as_deref().unwrap_or(""))))
            .or_else(|| self.cache.clone())
            .or_else(|| self.queue.clone())
            .unwrap_or_default()
    }
}

/// How a consumer's span names the message's sender, as OpenTelemetry messaging
/// instrumentations do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// A child of the producer span, in the sender's trace (single-message processing).
    #[default]
    Parentage,
    /// The root of a trace of its own, linking to the producer span (batch receive).
    Links,
}

/// What a change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Attack: a call's count jumps for a share of one entry's requests (page-size parameter).
    FanoutAmplification,
    /// Attack: a database call's count jumps under one parent.
    NPlusOne,
    /// Attack: a callee fails and its callers retry at once.
    RetryStorm,
    /// Attack: random keys drive a cache's miss ratio up.
    CacheBypass,
    /// Attack: a rare legitimate entry rises to `weight` of traffic, from many clients.
    MixShift,
    /// Attack: for `share` of `entry`'s requests the database call `call` takes `duration_ms`
    /// (a search pattern that makes the database scan a table): the same statement, the same
    /// count, far more time.
    ScanningQuery,
    /// Attack: for `share` of `entry`'s requests (all, without `entry`), `operation` responds
    /// with `response_bytes` (bulk export through a legitimate endpoint, a response amplifier),
    /// or the database call `call` returns `rows` (a query that reads a whole table and
    /// leaves the filtering to the service).
    Exfiltration,
    /// Attack: every call named in `calls` runs `factor` times as often (a cache in `calls`
    /// misses `factor` times as often) for `share` of requests: each edge moves a little,
    /// too little for its own detector, but many move together.
    CorrelatedShift,
    /// Legitimate: the request rate is multiplied by `factor`, same mix.
    FlashCrowd,
    /// Legitimate: the rate swings by `factor` (amplitude) over a 24 h sine.
    Diurnal,
    /// Legitimate: a deploy adds one cheap call (`add`) to `operation`.
    NewCall,
    /// Legitimate: every call to the database `db` takes `factor` times as long (a vacuum, a
    /// backup, a noisy neighbour), ramping up over the first quarter of the change.
    Slowdown,
    /// Legitimate: the consumers of the queue `call` fall behind: its messages wait
    /// `duration_ms` before they are taken (a backlog, a consumer restart).
    ConsumerLag,
    /// Legitimate: `entry` (no traffic before `start`) takes `weight` of traffic from then on:
    /// a new page or feature, a rare class the engine has never seen.
    NewEntry,
}

impl ChangeKind {
    /// Whether the change is an attack (it must be detected) rather than a legitimate change (it
    /// must stay quiet).
    pub fn is_attack(self) -> bool {
        matches!(
            self,
            ChangeKind::FanoutAmplification
                | ChangeKind::NPlusOne
                | ChangeKind::RetryStorm
                | ChangeKind::CacheBypass
                | ChangeKind::MixShift
                | ChangeKind::CorrelatedShift
                | ChangeKind::ScanningQuery
                | ChangeKind::Exfiltration
        )
    }

    /// The kind's name in scenarios and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::FanoutAmplification => "fanout_amplification",
            ChangeKind::NPlusOne => "n_plus_one",
            ChangeKind::RetryStorm => "retry_storm",
            ChangeKind::CacheBypass => "cache_bypass",
            ChangeKind::MixShift => "mix_shift",
            ChangeKind::NewEntry => "new_entry",
            ChangeKind::CorrelatedShift => "correlated_shift",
            ChangeKind::FlashCrowd => "flash_crowd",
            ChangeKind::Diurnal => "diurnal",
            ChangeKind::NewCall => "new_call",
            ChangeKind::ScanningQuery => "scanning_query",
            ChangeKind::Exfiltration => "exfiltration",
            ChangeKind::Slowdown => "slowdown",
            ChangeKind::ConsumerLag => "consumer_lag",
        }
    }
}

/// One labelled change over [start, end) of event time (offsets from the scenario start).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The change's name.
    pub name: String,
    /// What it changes.
    pub kind: ChangeKind,
    /// When it starts, after the scenario's start.
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    /// When it ends, after the scenario's start.
    #[serde(with = "humantime_serde")]
    pub end: Duration,
    /// Entry the change applies to: `"gateway GET /products"` (fan-out, N+1, mix shift).
    #[serde(default)]
    pub entry: Option<String>,
    /// Operation it applies to: `"reviews GET /reviews"` (retry storm, new call).
    #[serde(default)]
    pub operation: Option<String>,
    /// Call label it applies to (fan-out, N+1, cache bypass).
    #[serde(default)]
    pub call: Option<String>,
    /// Call labels it applies to (correlated shift).
    #[serde(default)]
    pub calls: Vec<String>,
    /// New call count (fan-out, N+1).
    #[serde(default)]
    pub count: Option<Count>,
    /// How long the call takes (scanning query), or its messages wait (consumer lag),
    /// milliseconds.
    #[serde(default)]
    pub duration_ms: Option<Count>,
    /// The response size, bytes (exfiltration).
    #[serde(default)]
    pub response_bytes: Option<Count>,
    /// Rows the database call returns (exfiltration).
    #[serde(default)]
    pub rows: Option<Count>,
    /// The database it applies to, `system:namespace` (slowdown).
    #[serde(default)]
    pub db: Option<String>,
    /// Share of matching requests affected (fan-out, N+1), 0..=1.
    #[serde(default = "one")]
    pub share: f64,
    /// Rate multiplier (flash crowd), amplitude (diurnal) or work multiplier (correlated shift).
    #[serde(default = "one")]
    pub factor: f64,
    /// Failure probability of `operation` (retry storm) or miss ratio (cache bypass).
    #[serde(default)]
    pub probability: f64,
    /// New share of traffic of `entry` (mix shift).
    #[serde(default)]
    pub weight: f64,
    /// Distinct client addresses the change's requests come from (mix shift).
    #[serde(default)]
    pub clients: u32,
    /// Accounts (`enduser.id`) the change's requests are signed in as (mix shift); 0: anonymous.
    #[serde(default)]
    pub users: u32,
    /// The call a deploy adds (new call).
    #[serde(default)]
    pub add: Option<Call>,
    /// Alert kinds that count as detecting this attack.
    #[serde(default)]
    pub detect_as: Vec<String>,
    /// What a detecting alert must name among its contributors: an entry (`"service
    /// operation"`), or the start of a contributor's name (`"edge …"`, `"clients …"`, `"user …"`).
    #[serde(default)]
    pub contributor: Option<String>,
    /// Honest bookkeeping: the detector for this attack does not exist yet, so a miss is
    /// expected and reported as XFAIL rather than failing `eval`.
    #[serde(default)]
    pub expected_to_fail: Option<String>,
}

fn collect_labels(calls: &[Call], labels: &mut Vec<String>) {
    for call in calls {
        labels.push(call.label());
        collect_labels(&call.on_miss, labels);
    }
}

fn one() -> f64 {
    1.0
}

/// Engine settings for `eval` and the expectations it checks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// `baseline.learning_min_samples`.
    pub learning_min_samples: u64,
    /// `assemble.trace_idle`.
    #[serde(with = "humantime_serde")]
    pub trace_idle: Duration,
    /// Largest acceptable rate of warning-or-higher alerts that match no attack.
    pub max_false_alerts_per_hour: f64,
    /// How long after an attack ends its alerts still count as detecting it.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Window length of the window-level detectors (`detect.window`); low-rate scenarios need
    /// longer windows for enough requests per window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            learning_min_samples: 200,
            trace_idle: Duration::from_secs(5),
            max_false_alerts_per_hour: 0.0,
            grace: Duration::from_secs(60),
            window: Duration::from_secs(10),
        }
    }
}

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error reading it.
        source: std::io::Error,
    },
    /// The file's text is not a valid scenario: the message names the field.
    #[error("scenario {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Scenario text (not from a file) is not valid: the message names the field.
    #[error("{0}")]
    Text(String),
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: shown.clone(), source })?;
        Scenario::parse(&text).map_err(|error| ScenarioError::Invalid { path: shown, message: error.to_string() })
    }

    /// Parses and validates scenario text; the error names the field.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse_text(text).map_err(ScenarioError::Text)
    }

    fn parse_text(text: &str) -> Result<Scenario, String> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(spec) = &scenario.generated {
            if spec.services == 0 || spec.entries == 0 {
                return Err("generated: services and entries must be at least 1".into());
            }
            let (entries, services) = crate::topology::generate(spec, scenario.seed);
            for (name, operations) in services {
                scenario.services.entry(name).or_insert(operations);
            }
            scenario.entries.extend(entries);
        }
        scenario.validate()?;
        Ok(scenario)
    }

    /// Splits `"service operation"`.
    pub fn split_target(target: &str) -> Option<(&str, &str)> {
        target.split_once(' ')
    }

    /// The behaviour of `service`'s `operation`, if the scenario defines it.
    pub fn operation(&self, service: &str, operation: &str) -> Option<&Operation> {
        self.services.get(service)?.get(operation)
    }
}

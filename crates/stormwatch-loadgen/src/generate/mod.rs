//! The trace generator: a scenario and a seed in, a deterministic stream of traces out, each
//! as the OTLP export requests the services' SDKs would send (one `ResourceSpans` per
//! service), plus ground-truth labels of which traces each change touched.
//!
//! Requests arrive as a Poisson process on event time. Each executes its entry operation
//! recursively: a call to an instrumented service is a CLIENT span in the caller and a SERVER
//! span in the callee; databases, caches and queues are CLIENT/PRODUCER spans with the usual
//! semantic-convention attributes. Active changes alter counts, failures, miss ratios, the
//! entry mix or the rate, and record the traces they affected.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use stormwatch_otlp::sampling;

use crate::distribution::Rng;
use crate::labels::Labels;
use crate::scenario::{Call, Change, ChangeKind, Operation, Scenario};

mod call;
mod queue;

const NANOS: f64 = 1e9;
/// Deepest call chain followed; deeper calls are not made (cyclic topologies end here).
const MAX_DEPTH: usize = 16;
/// Most spans one trace may have; calls past it are not made (a runaway topology ends here).
const MAX_SPANS_PER_TRACE: usize = 50_000;

/// One generated request.
pub struct GeneratedTrace {
    /// Its trace id.
    pub trace_id: [u8; 16],
    /// Export requests, one per service, in the order the services would send them (callees
    /// first, the entry service last, as in real traffic).
    pub request: ExportTraceServiceRequest,
    /// Event time its root starts.
    pub start_unix_nano: u64,
    /// Event time its root ends.
    pub end_unix_nano: u64,
    /// Spans in it.
    pub spans: usize,
}

impl std::fmt::Debug for GeneratedTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedTrace").finish_non_exhaustive()
    }
}

/// The stream of traces of one scenario.
pub struct Generator<'s> {
    scenario: &'s Scenario,
    rng: Rng,
    start_nanos: u64,
    end_nanos: u64,
    /// Event time of the next request's arrival.
    next_arrival: u64,
    requests: u64,
    labels: Labels,
    /// Consumers' traces waiting for their export time: (end, sequence) -> trace.
    pending: BTreeMap<(u64, u64), GeneratedTrace>,
    sequence: u64,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").finish_non_exhaustive()
    }
}

fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// The reverse proxy of a scenario `behind_proxy`.
const PROXY_ADDRESS: &str = "10.0.0.2";

fn int_attribute(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..Default::default()
    }
}

/// Per-request state while a trace is built.
struct Build<'a> {
    trace_id: [u8; 16],
    /// The entry's index in the scenario's entries.
    entry_index: usize,
    /// service -> spans
    spans: BTreeMap<String, Vec<Span>>,
    /// Order services were first seen in, reversed at the end (callees export first).
    service_order: Vec<String>,
    /// Changes active for this request, by index, with this request's share coin.
    active: Vec<(usize, &'a Change, bool)>,
    /// Changes that altered this trace.
    touched: Vec<usize>,
    client_address: String,
    /// `enduser.id` of a signed-in request.
    user: Option<String>,
    /// Spans made so far.
    span_count: usize,
    /// Messages sent to queues with a consumer, to be consumed after the request.
    sent: Vec<queue::Sent<'a>>,
}

impl<'s> Generator<'s> {
    /// A generator of `scenario`'s traffic, from its start.
    pub fn new(scenario: &'s Scenario) -> Generator<'s> {
        let start_nanos = scenario.start_unix_seconds * 1_000_000_000;
        let end_nanos = start_nanos + scenario.duration.as_nanos() as u64;
        let labels = Labels::new(scenario);
        Generator {
            scenario,
            rng: Rng::new(scenario.seed),
            start_nanos,
            end_nanos,
            next_arrival: start_nanos,
            requests: 0,
            labels,
            pending: BTreeMap::new(),
            sequence: 0,
        }
    }

    /// Ground truth so far (complete once the iterator is exhausted).
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The ground truth (complete once the iterator is exhausted).
    pub fn into_labels(self) -> Labels {
        self.labels
    }

    /// Requests generated so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    fn offset(&self, at: u64) -> std::time::Duration {
        std::time::Duration::from_nanos(at.saturating_sub(self.start_nanos))
    }

    fn active_changes(&self, at: u64) -> Vec<(usize, &'s Change)> {
        let offset = self.offset(at);
        self.scenario.changes.iter().enumerate().filter(|(_, c)| c.start <= offset && offset < c.end).collect()
    }

    /// Requests per second at `at`, after flash crowds and diurnal swings.
    fn rate(&self, at: u64, active: &[(usize, &Change)]) -> f64 {
        let mut rate = self.scenario.rate;
        for (_, change) in active {
            match change.kind {
                ChangeKind::FlashCrowd => rate *= change.factor,
                ChangeKind::Diurnal => {
                    let period = (change.end - change.start).as_secs_f64();
                    let phase = (self.offset(at) - change.start).as_secs_f64() / period;
                    rate *= 1.0 + change.factor * (std::f64::consts::TAU * phase).sin();
                }
                _ => {}
            }
        }
        rate.max(self.scenario.rate * 0.01)
    }

    fn new_span_id(&mut self) -> [u8; 8] {
        let mut id = self.rng.next_u64().to_be_bytes();
        if id == [0; 8] {
            id[7] = 1;
        }
        id
    }

    fn generate(&mut self, at: u64, active: Vec<(usize, &'s Change)>) -> (GeneratedTrace, Vec<GeneratedTrace>) {
        let mix = self.entry_mix(&active);
        let entry_index = self.rng.weighted(&mix.weights);
        let entry = &self.scenario.entries[entry_index];
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
        trace_id[8..].copy_from_slice(&self.rng.next_u64().to_be_bytes());
        let mut touched: Vec<usize> = mix
            .new_entries
            .iter()
            .filter(|(position, _)| *position == entry_index)
            .map(|(_, change)| *change)
            .collect();
        let (client_address, user) = self.client(mix.shifted, entry_index, &mut touched);
        let active_with_coins: Vec<(usize, &'s Change, bool)> =
            active.into_iter().map(|(i, c)| (i, c, self.rng.chance(c.share))).collect();
        let mut build = Build {
            trace_id,
            entry_index,
            spans: BTreeMap::new(),
            service_order: Vec::new(),
            active: active_with_coins,
            touched,
            client_address,
            user,
            span_count: 0,
            sent: Vec::new(),
        };
        let query =
            entry.query.iter().map(|key| format!("{key}={}", self.rng.between(1, 100))).collect::<Vec<_>>().join("&");
        let (end, _) = self.execute(&mut build, &entry.service, &entry.operation, None, at, 0, Some(&query));
        // Labels.
        build.touched.sort_unstable();
        build.touched.dedup();
        for index in &build.touched {
            self.labels.changes[*index].record(trace_id);
        }
        let consumed = self.consume_all(&mut build);
        let (resource_spans, spans) = resource_spans(build);
        let trace = GeneratedTrace {
            trace_id,
            request: ExportTraceServiceRequest { resource_spans },
            start_unix_nano: at,
            end_unix_nano: end,
            spans,
        };
        (trace, consumed)
    }

    /// The entry mix at this moment: the scenario's weights, shifted by active mix-shift and
    /// new-entry changes (a new entry has no traffic outside its change).
    fn entry_mix(&self, active: &[(usize, &Change)]) -> EntryMix {
        let mut weights: Vec<f64> = self.scenario.entries.iter().map(|e| e.weight).collect();
        let mut shifted = None;
        let mut new_entries = Vec::new();
        for change in self.scenario.changes.iter().filter(|c| c.kind == ChangeKind::NewEntry) {
            let entry = change.entry.as_deref().unwrap_or("");
            if let Some(position) = self.scenario.entries.iter().position(|e| e.matches(entry)) {
                weights[position] = 0.0;
            }
        }
        for (index, change) in active {
            if !matches!(change.kind, ChangeKind::MixShift | ChangeKind::NewEntry) {
                continue;
            }
            let entry = change.entry.as_deref().unwrap_or("");
            if let Some(position) = self.scenario.entries.iter().position(|e| e.matches(entry)) {
                let others: f64 = weights.iter().enumerate().filter(|(i, _)| *i != position).map(|(_, w)| w).sum();
                let share = change.weight.clamp(0.0, 0.99);
                weights[position] = share / (1.0 - share) * others;
                if change.kind == ChangeKind::MixShift {
                    shifted = Some((position, *index, change.clients.max(1), change.users));
                } else {
                    new_entries.push((position, *index));
                }
            }
        }
        EntryMix { weights, shifted, new_entries }
    }

    /// The request's client address and user: one of a mix shift's own clients (the change is
    /// then recorded as touching the trace), or one of the scenario's ordinary clients.
    fn client(
        &mut self,
        shifted: Option<(usize, usize, u32, u32)>,
        entry_index: usize,
        touched: &mut Vec<usize>,
    ) -> (String, Option<String>) {
        match shifted {
            Some((position, change_index, clients, users)) if position == entry_index => {
                touched.push(change_index);
                let client = self.rng.between(0, u64::from(clients) - 1);
                let user = (users > 0).then(|| format!("acct-{}", client % u64::from(users)));
                (format!("198.51.{}.{}", client / 250, client % 250 + 1), user)
            }
            _ => {
                let client = self.rng.between(0, u64::from(self.scenario.clients.max(1)) - 1);
                // Two in three ordinary clients are signed in, each as their own user.
                let user = (!client.is_multiple_of(3)).then(|| format!("user-{client}"));
                (format!("10.{}.{}.{}", client / 62_500, (client / 250) % 250, client % 250 + 1), user)
            }
        }
    }

    fn push(&mut self, build: &mut Build<'_>, service: &str, span: Span) {
        build.span_count += 1;
        if !build.spans.contains_key(service) {
            build.service_order.push(service.to_string());
        }
        build.spans.entry(service.to_string()).or_default().push(span);
    }

    /// Runs `service operation` as a SERVER span starting at `start`; returns (end, failed).
    #[allow(clippy::too_many_arguments)]
    fn execute(
        &mut self,
        build: &mut Build<'s>,
        service: &str,
        operation: &str,
        parent: Option<[u8; 8]>,
        start: u64,
        depth: usize,
        query: Option<&str>,
    ) -> (u64, bool) {
        let scenario = self.scenario;
        let Some(behaviour) = scenario.operation(service, operation) else {
            return (start, false);
        };
        let span_id = self.new_span_id();
        let target = format!("{service} {operation}");
        let mut cursor = start + 40_000;
        let mut calls: Vec<&'s Call> = behaviour.calls.iter().collect();
        for (index, change, _) in &build.active {
            if change.kind == ChangeKind::NewCall && change.operation.as_deref() == Some(target.as_str()) {
                if let Some(added) = &change.add {
                    calls.push(added);
                    build.touched.push(*index);
                }
            }
        }
        if depth < MAX_DEPTH {
            for call in calls {
                let count = self.count_of(build, call);
                for _ in 0..count {
                    if build.span_count >= MAX_SPANS_PER_TRACE {
                        break;
                    }
                    cursor = self.perform(build, service, call, span_id, cursor, depth);
                }
            }
        }
        let mut error_rate = behaviour.error_rate;
        for (index, change, _) in &build.active {
            if change.kind == ChangeKind::RetryStorm && change.operation.as_deref() == Some(target.as_str()) {
                error_rate = change.probability;
                build.touched.push(*index);
            }
        }
        let own = (behaviour.duration_ms * 1e6 * (0.5 + self.rng.unit())) as u64;
        let end = cursor + own;
        let failed = self.rng.chance(error_rate);
        let mut attributes =
            self.server_attributes(build, (service, operation), behaviour, failed, parent.is_none(), query);
        if let Some(bytes) = self.exfiltrated(build, &target) {
            attributes.retain(|kv| kv.key != "http.response.body.size");
            attributes.push(int_attribute("http.response.body.size", bytes as i64));
        }
        let span = Span {
            trace_id: build.trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: operation.into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            status: failed.then(|| Status { code: status::StatusCode::Error as i32, message: "internal error".into() }),
            flags: 0x100,
            ..Default::default()
        };
        self.push(build, service, span);
        (end, failed)
    }

    /// A SERVER span's HTTP attributes (and, at the entry, who sent the request: the client
    /// address, or a proxy's with the client in `X-Forwarded-For`, and the user).
    fn server_attributes(
        &mut self,
        build: &Build<'_>,
        (service, operation): (&str, &str),
        behaviour: &Operation,
        failed: bool,
        entry: bool,
        query: Option<&str>,
    ) -> Vec<KeyValue> {
        let (method, route) = operation.split_once(' ').unwrap_or(("GET", operation));
        let path = route.replace("{id}", &self.rng.between(1, 5000).to_string());
        let mut attributes = vec![
            attribute("http.request.method", method),
            attribute("http.route", route),
            attribute("url.path", path.as_str()),
            attribute("url.scheme", "http"),
            attribute("server.address", service),
            int_attribute("server.port", 8080),
            attribute("network.protocol.version", "1.1"),
            attribute("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) stormwatch-loadgen"),
            int_attribute("http.response.status_code", if failed { 500 } else { 200 }),
        ];
        if let Some(size) = &behaviour.response_bytes {
            attributes.push(int_attribute("http.response.body.size", size.sample(&mut self.rng) as i64));
        }
        if let Some(size) = &behaviour.request_bytes {
            attributes.push(int_attribute("http.request.body.size", size.sample(&mut self.rng) as i64));
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            attributes.push(attribute("url.query", query));
        }
        if entry && self.scenario.behind_proxy {
            attributes.push(attribute("network.peer.address", PROXY_ADDRESS));
            attributes.push(KeyValue {
                key: "http.request.header.x-forwarded-for".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::StringValue(build.client_address.clone())),
                        }],
                    })),
                }),
                ..Default::default()
            });
        } else if entry {
            attributes.push(attribute("client.address", build.client_address.as_str()));
        }
        if entry {
            if let Some(user) = &build.user {
                attributes.push(attribute("enduser.id", user.as_str()));
            }
        }
        attributes
    }

    /// The response size of `target` (`service operation`) under an active exfiltration change
    /// that applies to this request.
    fn exfiltrated(&mut self, build: &mut Build<'_>, target: &str) -> Option<u64> {
        for (index, change, coin) in &build.active {
            let applies = change.kind == ChangeKind::Exfiltration
                && *coin
                && change.operation.as_deref() == Some(target)
                && change.entry.as_deref().is_none_or(|entry| self.scenario.entries[build.entry_index].matches(entry));
            if let (true, Some(size)) = (applies, &change.response_bytes) {
                build.touched.push(*index);
                return Some(size.sample(&mut self.rng));
            }
        }
        None
    }

    /// How many times `call` runs in this execution, after fan-out and N+1 changes.
    fn count_of(&mut self, build: &mut Build<'_>, call: &Call) -> u64 {
        let label = call.label();
        for (index, change, coin) in &build.active {
            let applies = matches!(change.kind, ChangeKind::FanoutAmplification | ChangeKind::NPlusOne)
                && *coin
                && change.call.as_deref() == Some(label.as_str())
                && change.entry.as_deref().is_none_or(|entry| self.scenario.entries[build.entry_index].matches(entry));
            if applies {
                if let Some(count) = &change.count {
                    build.touched.push(*index);
                    return count.sample(&mut self.rng);
                }
            }
        }
        let mut count = call.count.sample(&mut self.rng);
        for (index, change, coin) in &build.active {
            if change.kind == ChangeKind::CorrelatedShift
                && *coin
                && change.calls.contains(&label)
                && call.cache.is_none()
            {
                build.touched.push(*index);
                // Stochastic rounding keeps the mean at `factor` times the usual count.
                let scaled = count as f64 * change.factor;
                count = scaled.floor() as u64 + u64::from(self.rng.chance(scaled.fract()));
            }
        }
        count
    }
}

/// The entry weights of one request, and the changes that shift them: (entry position, change
/// index, clients, users) of an active mix shift, (entry position, change index) of active new
/// entries.
struct EntryMix {
    weights: Vec<f64>,
    shifted: Option<(usize, usize, u32, u32)>,
    new_entries: Vec<(usize, usize)>,
}

/// One `ResourceSpans` per service, in the order the SDKs would export them (innermost
/// first), and how many spans they hold.
fn resource_spans(mut build: Build<'_>) -> (Vec<ResourceSpans>, usize) {
    let mut spans = 0;
    let mut resource_spans = Vec::new();
    for service in build.service_order.iter().rev() {
        let service_spans = build.spans.remove(service).unwrap_or_default();
        spans += service_spans.len();
        resource_spans.push(ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", service.as_str()),
                    attribute("service.version", "1.4.2"),
                    attribute("service.instance.id", format!("{service}-7d9f8b6c5-x2k4q")),
                    attribute("deployment.environment.name", "production"),
                    attribute("telemetry.sdk.name", "opentelemetry"),
                    attribute("telemetry.sdk.language", "rust"),
                    attribute("telemetry.sdk.version", "0.33.0"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "stormwatch-loadgen".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: service_spans,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    (resource_spans, spans)
}

impl Iterator for Generator<'_> {
    type Item = GeneratedTrace;

    fn next(&mut self) -> Option<GeneratedTrace> {
        loop {
            let at = self.next_arrival;
            // Consumers export when they are done: before the requests that arrive later.
            if let Some(entry) = self.pending.first_entry() {
                if entry.key().0 <= at || at >= self.end_nanos {
                    return Some(entry.remove());
                }
            }
            if at >= self.end_nanos {
                return None;
            }
            let active = self.active_changes(at);
            let gap = self.rng.exponential(NANOS / self.rate(at, &active));
            self.next_arrival = at + gap.max(1.0) as u64;
            self.requests += 1;
            let (mut trace, mut consumed) = self.generate(at, active);
            match self.scenario.sampling.map(Sampler::new) {
                None => {
                    self.schedule(consumed);
                    return Some(trace);
                }
                // A consumer follows its sender's sampling decision (parent-based sampling).
                Some(sampler) if sampler.keeps(&trace.trace_id) => {
                    sampler.stamp(&mut trace.request);
                    for consumer in &mut consumed {
                        sampler.stamp(&mut consumer.request);
                    }
                    self.schedule(consumed);
                    return Some(trace);
                }
                // Generated, so the traffic (and the random draws) are the unsampled one's.
                Some(_) => {}
            }
        }
    }
}

/// OpenTelemetry's consistent probability sampling ([`stormwatch_otlp::sampling`]): a trace is
/// kept when the last 56 bits of its id reach the rejection threshold, and its spans say the
/// threshold in `tracestate`.
#[derive(Clone, Copy, Debug)]
struct Sampler {
    threshold: u64,
}

impl Sampler {
    fn new(probability: f64) -> Sampler {
        Sampler { threshold: sampling::threshold(probability) }
    }

    fn keeps(self, trace_id: &[u8; 16]) -> bool {
        sampling::keeps(self.threshold, trace_id)
    }

    fn stamp(self, request: &mut ExportTraceServiceRequest) {
        let state = sampling::tracestate(self.threshold);
        let spans = request.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans).flat_map(|s| &mut s.spans);
        for span in spans {
            span.trace_state.clone_from(&state);
        }
    }
}

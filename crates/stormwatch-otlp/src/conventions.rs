//! Semantic conventions, old and current, mapped onto the model.
//!
//! Both generations of attribute names are accepted (`db.system` / `db.system.name`,
//! `http.method` / `http.request.method`, ...). When both are present the current name wins.

use stormwatch_model::{client_population, Dimension, Links, NodeKind, Remote, Span, SpanId, SpanKind, Sym, TraceId};

use crate::client::{ClientEvidence, ClientSource, TrustedProxies};
use crate::intern::{joined, normalized_statement};

/// Most query keys kept in a root class; more are an attacker's cardinality, not a shape.
const MAX_QUERY_KEYS: usize = 16;
/// Longest query key kept.
const MAX_QUERY_KEY_LEN: usize = 64;

/// The attributes the engine reads, borrowed from the decoded payload.
#[derive(Default)]
pub(crate) struct AttrView<'s> {
    http_method: Option<&'s str>,
    http_method_old: Option<&'s str>,
    http_route: Option<&'s str>,
    http_target: Option<&'s str>,
    url_query: Option<&'s str>,
    url_full: Option<&'s str>,
    url_full_old: Option<&'s str>,
    db_system: Option<&'s str>,
    db_system_old: Option<&'s str>,
    db_namespace: Option<&'s str>,
    db_namespace_old: Option<&'s str>,
    db_statement: Option<&'s str>,
    db_statement_old: Option<&'s str>,
    db_operation: Option<&'s str>,
    db_operation_old: Option<&'s str>,
    db_collection: Option<&'s str>,
    db_collection_old: Option<&'s str>,
    peer_service: Option<&'s str>,
    server_address: Option<&'s str>,
    server_address_old: Option<&'s str>,
    messaging_system: Option<&'s str>,
    messaging_destination: Option<&'s str>,
    messaging_destination_old: Option<&'s str>,
    /// The client: forwarding headers, `client.address`, `http.client_ip`, the peer.
    client: ClientEvidence<'s>,
    /// `network.peer.address` (current) and its older names.
    peer: Option<&'s str>,
    peer_old: Option<&'s str>,
    user: Option<&'s str>,
    resend_count: Option<i64>,
    bytes: Option<i64>,
    request_bytes: Option<i64>,
    /// `db.response.returned_rows`.
    rows: Option<i64>,
    /// Uncompressed bytes of the RPC messages the span's events say it sent and received.
    rpc_sent: Option<i64>,
    rpc_received: Option<i64>,
}

/// One span event's attributes as far as sizes go: an RPC `message` event's direction and
/// uncompressed size (`rpc.message.type`, `rpc.message.uncompressed_size`, or the older
/// `message.type`, `message.uncompressed_size`).
#[derive(Default)]
pub(crate) struct MessageEvent {
    received: Option<bool>,
    size: Option<i64>,
}

impl MessageEvent {
    /// Records one string attribute of the event.
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        if matches!(key, "rpc.message.type" | "message.type") {
            self.received = match value {
                "RECEIVED" => Some(true),
                "SENT" => Some(false),
                _ => None,
            };
        }
    }

    /// Records one integer attribute of the event.
    pub(crate) fn set_int(&mut self, key: &str, value: i64) {
        if matches!(key, "rpc.message.uncompressed_size" | "message.uncompressed_size") {
            self.size = Some(value);
        }
    }
}

impl<'s> AttrView<'s> {
    /// Records one string attribute if the engine uses it (for a captured request header, one
    /// line of it: an array's strings are recorded one by one).
    pub(crate) fn set(&mut self, key: &str, value: &'s str) {
        let header = match key {
            "http.request.header.forwarded" => Some(&mut self.client.forwarded),
            "http.request.header.x-forwarded-for" | "http.request.header.x_forwarded_for" => {
                Some(&mut self.client.x_forwarded_for)
            }
            "http.request.header.x-real-ip" | "http.request.header.x_real_ip" => Some(&mut self.client.x_real_ip),
            _ => None,
        };
        if let Some(lines) = header {
            lines.push(value);
            return;
        }
        let slot = match key {
            "http.request.method" => &mut self.http_method,
            "http.method" => &mut self.http_method_old,
            "http.route" => &mut self.http_route,
            "http.target" => &mut self.http_target,
            "url.query" => &mut self.url_query,
            "url.full" => &mut self.url_full,
            "http.url" => &mut self.url_full_old,
            "db.system.name" => &mut self.db_system,
            "db.system" => &mut self.db_system_old,
            "db.namespace" => &mut self.db_namespace,
            "db.name" => &mut self.db_namespace_old,
            "db.query.text" => &mut self.db_statement,
            "db.statement" => &mut self.db_statement_old,
            "db.operation.name" => &mut self.db_operation,
            "db.operation" => &mut self.db_operation_old,
            "db.collection.name" => &mut self.db_collection,
            "db.sql.table" | "db.mongodb.collection" => &mut self.db_collection_old,
            "peer.service" => &mut self.peer_service,
            "server.address" => &mut self.server_address,
            "net.peer.name" => &mut self.server_address_old,
            "messaging.system" => &mut self.messaging_system,
            "messaging.destination.name" => &mut self.messaging_destination,
            "messaging.destination" => &mut self.messaging_destination_old,
            "client.address" => &mut self.client.client_address,
            "http.client_ip" => &mut self.client.http_client_ip,
            "network.peer.address" => &mut self.peer,
            "net.sock.peer.addr" | "net.peer.ip" => &mut self.peer_old,
            "enduser.id" | "user.id" => &mut self.user,
            _ => return,
        };
        *slot = Some(value);
    }

    /// Records one integer attribute if the engine uses it.
    pub(crate) fn set_int(&mut self, key: &str, value: i64) {
        match key {
            "http.request.resend_count" | "http.resend_count" => self.resend_count = Some(value),
            // Current names first; the older ones only fill a gap.
            "http.response.body.size" | "messaging.message.body.size" => self.bytes = Some(value),
            "http.response_content_length" | "messaging.message_payload_size_bytes" => {
                self.bytes = self.bytes.or(Some(value));
            }
            "http.request.body.size" => self.request_bytes = Some(value),
            "http.request_content_length" => self.request_bytes = self.request_bytes.or(Some(value)),
            "db.response.returned_rows" => self.rows = Some(value),
            _ => {}
        }
    }

    /// Adds one span event's message size, if it is an RPC message event with both a
    /// direction and a size.
    pub(crate) fn message(&mut self, event: &MessageEvent) {
        let (Some(received), Some(size)) = (event.received, event.size) else { return };
        let total = if received { &mut self.rpc_received } else { &mut self.rpc_sent };
        *total = Some(total.unwrap_or(0).saturating_add(size.max(0)));
    }

    /// Whether `key` is a captured request header the engine reads (decoders pass each string
    /// of an array value of such a key to [`AttrView::set`]).
    pub(crate) fn reads_array(key: &str) -> bool {
        key.starts_with("http.request.header.")
    }

    /// Who sent the request (entry spans), as a client population with where it came from:
    /// see [`crate::client`]. A client known only by a name (`client.address` may be a domain
    /// name or a socket path) is kept as that name.
    fn client(&self) -> Option<String> {
        let mut evidence = self.client;
        // The peer vouches for forwarding headers; SDKs that record no peer attribute put the
        // socket's address in `client.address`.
        evidence.peer = self.peer.or(self.peer_old).or(evidence.client_address);
        if let Some((address, source)) = evidence.resolve(&TrustedProxies::global()) {
            return Some(format!("{} ({})", client_population(&address.to_string()), source.as_str()));
        }
        let named = [
            (evidence.client_address, ClientSource::ClientAddress),
            (evidence.http_client_ip, ClientSource::HttpClientIp),
            (evidence.peer, ClientSource::Peer),
        ];
        named.into_iter().find_map(|(name, source)| {
            name.filter(|name| !name.trim().is_empty()).map(|name| format!("{name} ({})", source.as_str()))
        })
    }

    /// A database client span that names no statement or operation and is called `connect`
    /// (`pg.connect`, `pg-pool.connect`, `mysql.connect`, ...): it connects, it queries nothing.
    fn only_connects(&self, span_name: &str) -> bool {
        self.db_system.or(self.db_system_old).is_some()
            && self.db_statement.or(self.db_statement_old).is_none()
            && self.db_operation.or(self.db_operation_old).is_none()
            && (span_name.eq_ignore_ascii_case("connect") || span_name.to_ascii_lowercase().ends_with(".connect"))
    }

    fn method(&self) -> Option<&'s str> {
        self.http_method.or(self.http_method_old)
    }

    fn url_full(&self) -> Option<&'s str> {
        self.url_full.or(self.url_full_old)
    }

    /// The raw query string of the request, from whichever attribute carries it.
    fn query(&self) -> Option<&'s str> {
        if let Some(query) = self.url_query {
            return Some(query);
        }
        let target = self.http_target.or_else(|| self.url_full())?;
        let query = target.split_once('?')?.1;
        Some(query.split('#').next().unwrap_or(query))
    }

    fn remote(&self, span_name: &str) -> Option<Remote> {
        if let Some(system) = self.db_system.or(self.db_system_old) {
            let kind = if is_cache_system(system) { NodeKind::Cache } else { NodeKind::Database };
            let name = match self.db_namespace.or(self.db_namespace_old) {
                Some(namespace) if !namespace.is_empty() => joined(Dimension::Peer, system, ':', namespace),
                _ => Sym::bounded(Dimension::Peer, system),
            };
            let operation = if let Some(statement) = self.db_statement.or(self.db_statement_old) {
                normalized_statement(statement)
            } else if let Some(operation) = self.db_operation.or(self.db_operation_old) {
                match self.db_collection.or(self.db_collection_old) {
                    Some(collection) => joined(Dimension::Statement, operation, ' ', collection),
                    None => Sym::bounded(Dimension::Statement, operation),
                }
            } else {
                Sym::bounded(Dimension::Operation, span_name)
            };
            return Some(Remote { kind, name, operation });
        }
        if let Some(system) = self.messaging_system {
            let name = match self.messaging_destination.or(self.messaging_destination_old) {
                Some(destination) => joined(Dimension::Peer, system, ':', destination),
                None => Sym::bounded(Dimension::Peer, system),
            };
            return Some(Remote {
                kind: NodeKind::Queue,
                name,
                operation: Sym::bounded(Dimension::Operation, span_name),
            });
        }
        let peer = self
            .peer_service
            .or(self.server_address)
            .or(self.server_address_old)
            .or_else(|| self.url_full().and_then(url_host))?;
        Some(Remote {
            kind: NodeKind::Peer,
            name: Sym::bounded(Dimension::Peer, peer),
            operation: Sym::bounded(Dimension::Operation, span_name),
        })
    }
}

fn is_cache_system(system: &str) -> bool {
    matches!(system, "redis" | "memcached" | "hazelcast" | "ignite" | "geode" | "coherence" | "valkey")
}

/// `host[:port]` of an absolute URL.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    (!host.is_empty()).then_some(host)
}

/// The shape of a query string: its distinct keys, sorted, joined by `&`. Values are never
/// kept. `None` when there are no keys.
pub fn query_shape(query: &str) -> Option<String> {
    let mut keys: Vec<&str> = query
        .split('&')
        .filter_map(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            (!key.is_empty()).then(|| truncate(key, MAX_QUERY_KEY_LEN))
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return None;
    }
    let overflow = keys.len() > MAX_QUERY_KEYS;
    keys.truncate(MAX_QUERY_KEYS);
    let mut shape = keys.join("&");
    if overflow {
        shape.push_str("&...");
    }
    Some(shape)
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A span id as it came off the wire: bytes (protobuf) or hex text (OTLP/JSON).
#[derive(Clone, Copy)]
pub(crate) enum WireId<'s> {
    Bytes(&'s [u8]),
    Hex(&'s str),
}

impl WireId<'_> {
    fn is_empty(self) -> bool {
        match self {
            WireId::Bytes(bytes) => bytes.is_empty(),
            WireId::Hex(text) => text.is_empty(),
        }
    }

    /// Parses the id; on failure, the rejection reason naming the field as the encoding
    /// spells it (`trace_id` in protobuf, `traceId` in JSON, with the offending text).
    fn parse<T>(
        self,
        field: &str,
        json_field: &str,
        from_bytes: fn(&[u8]) -> Result<T, stormwatch_model::IdError>,
        from_hex: fn(&str) -> Result<T, stormwatch_model::IdError>,
    ) -> Result<T, String> {
        match self {
            WireId::Bytes(bytes) => from_bytes(bytes).map_err(|e| format!("{field}: {e}")),
            WireId::Hex(text) => from_hex(text).map_err(|e| format!("{json_field} {text:?}: {e}")),
        }
    }
}

/// Everything a decoder has read about one span, before validation and interning.
pub(crate) struct RawSpan<'s> {
    pub(crate) trace_id: WireId<'s>,
    pub(crate) span_id: WireId<'s>,
    /// Empty for a root span.
    pub(crate) parent_span_id: WireId<'s>,
    pub(crate) service: Sym,
    pub(crate) name: &'s str,
    /// The OTLP `SpanKind` number.
    pub(crate) kind: i32,
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
    pub(crate) is_error: bool,
    /// The span's W3C `tracestate` (empty when none).
    pub(crate) trace_state: &'s str,
    /// Its links, read only for the spans that keep them.
    pub(crate) links: RawLinks<'s>,
}

/// A span's links as the decoder found them: read only when the span keeps them (entry spans),
/// into at most [`Links::MAX`] traces.
pub(crate) enum RawLinks<'s> {
    /// It has none.
    None,
    /// The protobuf `Span` message, which has links (field 13) somewhere in it.
    Wire(&'s [u8]),
    /// The linked spans' trace ids.
    Ids(Vec<WireId<'s>>),
}

impl RawLinks<'_> {
    /// The traces other than `own` linked to; a link whose trace id cannot be read is counted
    /// as dropped, never a reason to refuse the span.
    fn read(&self, own: TraceId) -> Option<Box<Links>> {
        let mut links = Links::default();
        let mut add = |id: Result<TraceId, String>| match id {
            Ok(trace) if trace != own => links.add(trace),
            Ok(_) => {}
            Err(_) => links.dropped = links.dropped.saturating_add(1),
        };
        match self {
            RawLinks::None => return None,
            RawLinks::Wire(span) => {
                crate::wire::link_trace_ids(span, &mut |id| add(TraceId::from_bytes(id).map_err(|e| e.to_string())))
            }
            RawLinks::Ids(ids) => {
                for id in ids {
                    add(id.parse("link trace_id", "traceId", TraceId::from_bytes, TraceId::from_hex));
                }
            }
        }
        (!links.is_empty() || links.dropped > 0).then(|| Box::new(links))
    }
}

/// Validates the ids of `raw` and appends the model span to `decoded`, or counts the span as
/// rejected with the reason. Every decoder ends here, so all report rejections alike.
pub(crate) fn push_span(decoded: &mut crate::Decoded, raw: RawSpan<'_>, attrs: &AttrView<'_>) {
    let ids = (|| {
        let trace_id = raw.trace_id.parse("trace_id", "traceId", TraceId::from_bytes, TraceId::from_hex)?;
        let span_id = raw.span_id.parse("span_id", "spanId", SpanId::from_bytes, SpanId::from_hex)?;
        let parent_span_id = if raw.parent_span_id.is_empty() {
            None
        } else {
            Some(raw.parent_span_id.parse("parent_span_id", "parentSpanId", SpanId::from_bytes, SpanId::from_hex)?)
        };
        Ok::<_, String>((trace_id, span_id, parent_span_id))
    })();
    match ids {
        Ok((trace_id, span_id, parent_span_id)) => {
            decoded.spans.push(build_span(trace_id, span_id, parent_span_id, &raw, attrs));
        }
        Err(reason) => decoded.reject(|| {
            // Both come from the sender: at most a line of each goes back in the response.
            let name = stormwatch_model::clean_name(raw.name, 128).0;
            format!("span {name:?}: {}", stormwatch_model::clean_name(&reason, 256).0)
        }),
    }
}

/// Builds the model span: operation naming, query shape and virtual callee.
fn build_span(
    trace_id: TraceId,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    raw: &RawSpan<'_>,
    attrs: &AttrView<'_>,
) -> Span {
    let mut kind = SpanKind::from_otlp(raw.kind);
    if kind.is_outgoing() && attrs.only_connects(raw.name) {
        // A connection made or checked out of a pool (node-postgres's `pg.connect`,
        // `pg-pool.connect`): the client waiting, not a call the database answered. As a call it
        // would double every query's count, and a pool running dry would look like a slow
        // database.
        kind = SpanKind::Internal;
    }
    let entry_like = kind.is_entry() || parent_span_id.is_none();
    let operation = match (attrs.http_route, entry_like) {
        (Some(route), true) if !raw.name.contains(route) => match attrs.method() {
            Some(method) => joined(Dimension::Operation, method, ' ', route),
            None => Sym::bounded(Dimension::Operation, route),
        },
        _ => Sym::bounded(Dimension::Operation, raw.name),
    };
    let query_shape = if entry_like {
        attrs.query().and_then(query_shape).map(|shape| Sym::bounded(Dimension::QueryShape, &shape))
    } else {
        None
    };
    let remote = if kind.is_outgoing() { attrs.remote(raw.name) } else { None };
    // Where no body size is reported, an RPC's message events tell: a client receives the
    // response, a server sends it.
    let (response_messages, request_messages) =
        if kind.is_outgoing() { (attrs.rpc_received, attrs.rpc_sent) } else { (attrs.rpc_sent, attrs.rpc_received) };
    // Clients are kept as their population (/16, /64), with where the address came from: what
    // window detectors attribute to, and far fewer names than addresses.
    let client_address =
        if entry_like { attrs.client().map(|client| Sym::bounded(Dimension::Client, &client)) } else { None };
    // A database call's payload is its rows (see `PayloadUnit`), whatever bytes it reports.
    let payload = match remote {
        Some(Remote { kind: NodeKind::Database, .. }) => attrs.rows,
        _ => attrs.bytes.or(response_messages),
    };
    let user = if entry_like {
        attrs.user.filter(|user| !user.is_empty()).map(|user| Sym::bounded(Dimension::User, user))
    } else {
        None
    };
    Span {
        trace_id,
        span_id,
        parent_span_id,
        service: raw.service,
        operation,
        kind,
        start_unix_nano: raw.start_unix_nano,
        end_unix_nano: raw.end_unix_nano,
        is_error: raw.is_error,
        retry: attrs.resend_count.is_some_and(|count| count > 0),
        query_shape,
        remote,
        client_address,
        user,
        bytes: payload.map_or(0, |payload| payload.clamp(0, i64::from(u32::MAX)) as u32),
        request_bytes: attrs
            .request_bytes
            .or(request_messages)
            .map_or(0, |bytes| bytes.clamp(0, i64::from(u32::MAX)) as u32),
        adjusted_count: crate::sampling::adjusted_count(raw.trace_state),
        // Kept where they say which traces a request continues: on entry spans.
        links: if entry_like { raw.links.read(trace_id) } else { None },
    }
}

pub(crate) use stormwatch_model::UNKNOWN_SERVICE;

/// A resource's service: the last non-empty string among its `service.name` values (in
/// attribute order; `None` for a non-string value), else [`UNKNOWN_SERVICE`]. The wire decoder
/// applies the same rule while it streams the attributes.
pub(crate) fn service_name<'a>(values: impl Iterator<Item = Option<&'a str>>) -> &'a str {
    values.flatten().filter(|name| !name.is_empty()).last().unwrap_or(UNKNOWN_SERVICE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_shapes_keep_keys_not_values() {
        assert_eq!(query_shape("page=2&expand=reviews").as_deref(), Some("expand&page"));
        assert_eq!(query_shape("expand=1&expand=2").as_deref(), Some("expand"));
        assert_eq!(query_shape("").as_deref(), None);
        assert_eq!(query_shape("=x").as_deref(), None);
        let many: Vec<String> = (0..40).map(|i| format!("k{i:02}=v")).collect();
        assert!(query_shape(&many.join("&")).unwrap().ends_with("&..."));
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("http://catalog:8081/items?x=1"), Some("catalog:8081"));
        assert_eq!(url_host("https://user@api.example.com"), Some("api.example.com"));
        assert_eq!(url_host("/relative"), None);
    }

    #[test]
    fn old_and_new_database_conventions_agree() {
        let mut old = AttrView::default();
        old.set("db.system", "postgresql");
        old.set("db.name", "shop");
        old.set("db.statement", "SELECT * FROM users WHERE id = 5");
        let mut new = AttrView::default();
        new.set("db.system.name", "postgresql");
        new.set("db.namespace", "shop");
        new.set("db.query.text", "SELECT * FROM users WHERE id = 7");
        let (old, new) = (old.remote("SELECT").unwrap(), new.remote("SELECT").unwrap());
        assert_eq!(old, new);
        assert_eq!(old.kind, NodeKind::Database);
        assert_eq!(old.name.as_str(), "postgresql:shop");
        assert_eq!(old.operation.as_str(), "SELECT * FROM users WHERE id = ?");
    }

    #[test]
    fn caches_queues_and_peers() {
        let mut redis = AttrView::default();
        redis.set("db.system", "redis");
        redis.set("db.operation", "GET");
        assert_eq!(redis.remote("GET").unwrap().kind, NodeKind::Cache);
        let mut kafka = AttrView::default();
        kafka.set("messaging.system", "kafka");
        kafka.set("messaging.destination.name", "orders");
        let queue = kafka.remote("orders publish").unwrap();
        assert_eq!((queue.kind, queue.name.as_str()), (NodeKind::Queue, "kafka:orders"));
        let mut http = AttrView::default();
        http.set("http.url", "http://payments:9000/charge");
        let peer = http.remote("POST").unwrap();
        assert_eq!((peer.kind, peer.name.as_str()), (NodeKind::Peer, "payments:9000"));
        let mut named = AttrView::default();
        named.set("server.address", "payments");
        named.set("peer.service", "payments-api");
        assert_eq!(named.remote("POST").unwrap().name.as_str(), "payments-api");
    }
}

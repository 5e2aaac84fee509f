//! The OTLP/JSON mapping: lowerCamelCase keys (snake_case accepted too), hex trace and span
//! ids, 64-bit integers as strings or numbers, enums as integers or names. Unknown fields are
//! ignored, as the OTLP specification requires of receivers.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use stormwatch_model::{Dimension, Sym};

use crate::conventions::{push_span, service_name, AttrView, MessageEvent, RawLinks, RawSpan, WireId};
use crate::{Decoded, Result};

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default, rename = "resourceSpans", alias = "resource_spans")]
    resource_spans: Vec<ResourceSpans<'a>>,
}

#[derive(Deserialize)]
struct ResourceSpans<'a> {
    #[serde(borrow, default)]
    resource: Option<Resource<'a>>,
    #[serde(borrow, default, rename = "scopeSpans", alias = "scope_spans")]
    scope_spans: Vec<ScopeSpans<'a>>,
}

#[derive(Deserialize)]
struct Resource<'a> {
    #[serde(borrow, default)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
struct ScopeSpans<'a> {
    #[serde(borrow, default)]
    spans: Vec<JsonSpan<'a>>,
}

#[derive(Deserialize)]
struct JsonSpan<'a> {
    #[serde(borrow, default, rename = "traceId", alias = "trace_id")]
    trace_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "spanId", alias = "span_id")]
    span_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "parentSpanId", alias = "parent_span_id")]
    parent_span_id: Cow<'a, str>,
    #[serde(borrow, default, rename = "traceState", alias = "trace_state")]
    trace_state: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    kind: SpanKindValue,
    #[serde(default, rename = "startTimeUnixNano", alias = "start_time_unix_nano")]
    start_time_unix_nano: U64Value,
    #[serde(default, rename = "endTimeUnixNano", alias = "end_time_unix_nano")]
    end_time_unix_nano: U64Value,
    #[serde(borrow, default)]
    attributes: Vec<KeyValue<'a>>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(borrow, default)]
    links: Vec<JsonLink<'a>>,
    #[serde(borrow, default)]
    events: Vec<JsonEvent<'a>>,
}

/// A span event: only its attributes are read (an RPC message's direction and size).
#[derive(Deserialize)]
struct JsonEvent<'a> {
    #[serde(borrow, default)]
    attributes: Vec<KeyValue<'a>>,
}

/// A span link: only the linked trace is read.
#[derive(Deserialize)]
struct JsonLink<'a> {
    #[serde(borrow, default, rename = "traceId", alias = "trace_id")]
    trace_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct KeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<AnyValue<'a>>,
}

#[derive(Deserialize)]
struct AnyValue<'a> {
    #[serde(borrow, default, rename = "stringValue", alias = "string_value")]
    string_value: Option<Cow<'a, str>>,
    #[serde(default, rename = "intValue", alias = "int_value")]
    int_value: Option<I64Value>,
    #[serde(borrow, default, rename = "arrayValue", alias = "array_value")]
    array_value: Option<ArrayValue<'a>>,
}

#[derive(Deserialize)]
struct ArrayValue<'a> {
    #[serde(borrow, default)]
    values: Vec<AnyValue<'a>>,
}

/// A signed 64-bit integer written as a JSON string (the mapping's rule) or number.
struct I64Value(i64);

impl<'de> Deserialize<'de> for I64Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = I64Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer as a number or a decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<I64Value, E> {
                Ok(I64Value(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<I64Value, E> {
                i64::try_from(v).map(I64Value).map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<I64Value, E> {
                v.parse().map(I64Value).map_err(|_| E::custom(format!("{v:?} is not an integer")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    code: StatusCodeValue,
}

/// An unsigned 64-bit integer written as a JSON string (the mapping's rule) or number.
#[derive(Default)]
struct U64Value(u64);

impl<'de> Deserialize<'de> for U64Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = U64Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned integer as a number or a decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<U64Value, E> {
                Ok(U64Value(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<U64Value, E> {
                u64::try_from(v).map(U64Value).map_err(|_| E::custom(format!("negative timestamp {v}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<U64Value, E> {
                if v >= 0.0 && v < u64::MAX as f64 {
                    Ok(U64Value(v as u64))
                } else {
                    Err(E::custom(format!("timestamp {v} out of range")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<U64Value, E> {
                v.parse().map(U64Value).map_err(|_| E::custom(format!("{v:?} is not an unsigned integer")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// An enum written as its number or its name.
fn enum_number<'de, D: Deserializer<'de>>(deserializer: D, names: &'static [&'static str]) -> Result<i32, D::Error> {
    struct V(&'static [&'static str]);
    impl Visitor<'_> for V {
        type Value = i32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an enum number or one of {:?}", self.0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom("enum number out of range"))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom("enum number out of range"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
            match self.0.iter().position(|name| *name == v) {
                Some(index) => Ok(index as i32),
                None => Err(E::unknown_variant(v, self.0)),
            }
        }
    }
    deserializer.deserialize_any(V(names))
}

#[derive(Default)]
struct SpanKindValue(i32);

impl<'de> Deserialize<'de> for SpanKindValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &[
            "SPAN_KIND_UNSPECIFIED",
            "SPAN_KIND_INTERNAL",
            "SPAN_KIND_SERVER",
            "SPAN_KIND_CLIENT",
            "SPAN_KIND_PRODUCER",
            "SPAN_KIND_CONSUMER",
        ];
        enum_number(deserializer, NAMES).map(SpanKindValue)
    }
}

#[derive(Default)]
struct StatusCodeValue(i32);

impl<'de> Deserialize<'de> for StatusCodeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];
        enum_number(deserializer, NAMES).map(StatusCodeValue)
    }
}

fn string_value<'s>(kv: &'s KeyValue<'_>) -> Option<&'s str> {
    kv.value.as_ref()?.string_value.as_deref()
}

/// Decodes one OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode_json(bytes: &[u8]) -> Result<Decoded> {
    let request: Request<'_> = serde_json::from_slice(bytes)?;
    let mut decoded = Decoded::default();
    for resource_spans in &request.resource_spans {
        let names = resource_spans.resource.iter().flat_map(|resource| &resource.attributes);
        let service = Sym::bounded(
            Dimension::Service,
            service_name(names.filter(|kv| kv.key == "service.name").map(string_value)),
        );
        for scope_spans in &resource_spans.scope_spans {
            decoded.spans.reserve(scope_spans.spans.len());
            for span in &scope_spans.spans {
                let mut attrs = AttrView::default();
                for kv in &span.attributes {
                    if let Some(value) = string_value(kv) {
                        attrs.set(&kv.key, value);
                    } else if let Some(value) = kv.value.as_ref().and_then(|v| v.int_value.as_ref()) {
                        attrs.set_int(&kv.key, value.0);
                    } else if let Some(array) = kv.value.as_ref().and_then(|v| v.array_value.as_ref()) {
                        if AttrView::reads_array(&kv.key) {
                            for value in array.values.iter().filter_map(|v| v.string_value.as_deref()) {
                                attrs.set(&kv.key, value);
                            }
                        }
                    }
                }
                for event in &span.events {
                    let mut message = MessageEvent::default();
                    for kv in &event.attributes {
                        if let Some(value) = string_value(kv) {
                            message.set(&kv.key, value);
                        } else if let Some(value) = kv.value.as_ref().and_then(|v| v.int_value.as_ref()) {
                            message.set_int(&kv.key, value.0);
                        }
                    }
                    attrs.message(&message);
                }
                let raw = RawSpan {
                    trace_id: WireId::Hex(&span.trace_id),
                    span_id: WireId::Hex(&span.span_id),
                    parent_span_id: WireId::Hex(&span.parent_span_id),
                    service,
                    name: &span.name,
                    kind: span.kind.0,
                    start_unix_nano: span.start_time_unix_nano.0,
                    end_unix_nano: span.end_time_unix_nano.0,
                    is_error: span.status.as_ref().is_some_and(|status| status.code.0 == 2),
                    trace_state: &span.trace_state,
                    links: if span.links.is_empty() {
                        RawLinks::None
                    } else {
                        RawLinks::Ids(span.links.iter().map(|link| WireId::Hex(&link.trace_id)).collect())
                    },
                };
                push_span(&mut decoded, raw, &attrs);
            }
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use stormwatch_model::{NodeKind, SpanKind};

    use super::*;

    #[test]
    fn names_numbers_and_strings() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"catalog"}}]},
            "scopeSpans":[{"scope":{"name":"x"},"spans":[
              {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","parentSpanId":"1112131415161718",
               "traceState":"vendor=1,ot=th:c",
               "name":"SELECT","kind":"SPAN_KIND_CLIENT","startTimeUnixNano":"1000","endTimeUnixNano":2000,
               "attributes":[{"key":"db.system","value":{"stringValue":"sqlite"}},
                             {"key":"db.statement","value":{"stringValue":"SELECT * FROM items WHERE id = 42"}},
                             {"key":"retries","value":{"intValue":"3"}}],
               "status":{"code":"STATUS_CODE_ERROR"},"unknownField":{"nested":[1,2]}}]}]}]}"#;
        let decoded = decode_json(json).unwrap();
        assert_eq!(decoded.rejected_spans, 0);
        let span = &decoded.spans[0];
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!((span.start_unix_nano, span.end_unix_nano), (1000, 2000));
        assert!(span.is_error);
        let remote = span.remote.unwrap();
        assert_eq!(remote.kind, NodeKind::Database);
        assert_eq!(remote.operation.as_str(), "SELECT * FROM items WHERE id = ?");
        assert_eq!(span.parent_span_id.unwrap().to_string(), "1112131415161718");
        // Sampled at 25%: the span stands for four.
        assert_eq!(span.adjusted_count, 4.0);
    }

    #[test]
    fn bad_ids_rejected_bad_json_refused() {
        let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"abcd","spanId":"0102030405060708","name":"a"},
            {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"b"}]}]}]}"#;
        let decoded = decode_json(json).unwrap();
        assert_eq!((decoded.spans.len(), decoded.rejected_spans), (1, 1));
        assert_eq!(decoded.spans[0].service.as_str(), "unknown_service");
        assert!(decode_json(b"{\"resourceSpans\": [").is_err());
        assert!(decode_json(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SPAN_KIND_NOPE"}]}]}]}"#).is_err());
    }

    /// A consumer's links name the producers' traces (its own trace, an unreadable id and a
    /// client span's links are not kept), and decode as protobuf's do.
    #[test]
    fn consumer_links_name_the_producer_traces() {
        let producer = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
        let own = "0102030405060708090a0b0c0d0e0f10";
        let link = |trace: &str| format!(r#"{{"traceId":"{trace}","spanId":"0102030405060708"}}"#);
        let links = [link(producer), link(producer), link(own), link("zz")].join(",");
        let json = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[
            {{"traceId":"{own}","spanId":"0102030405060708","name":"process orders","kind":5,"links":[{links}]}},
            {{"traceId":"{own}","spanId":"0102030405060709","parentSpanId":"0102030405060708","name":"send","kind":4,
              "links":[{links}]}}]}}]}}]}}"#
        );
        let decoded = decode_json(json.as_bytes()).unwrap();
        assert_eq!(decoded.rejected_spans, 0);
        let links = decoded.spans[0].links.as_deref().expect("a consumer keeps its links");
        assert_eq!(links.traces(), &[(stormwatch_model::TraceId::from_hex(producer).unwrap(), 2)]);
        assert_eq!(links.dropped, 1);
        assert!(decoded.spans[1].links.is_none(), "a producer span's links are not needed");
    }

    /// A gRPC call that reports no body sizes: its message events give them, summed per
    /// direction (a client receives the response, a server sends it), in either convention.
    #[test]
    fn rpc_message_events_give_the_sizes() {
        let message = |kind: &str, size: i64, old: bool| {
            let (type_key, size_key) = if old {
                ("message.type", "message.uncompressed_size")
            } else {
                ("rpc.message.type", "rpc.message.uncompressed_size")
            };
            format!(
                r#"{{"name":"message","attributes":[{{"key":"{type_key}","value":{{"stringValue":"{kind}"}}}},
                {{"key":"{size_key}","value":{{"intValue":"{size}"}}}}]}}"#
            )
        };
        let events =
            [message("SENT", 120, false), message("RECEIVED", 400_000, false), message("RECEIVED", 600_000, true)]
                .join(",");
        let json = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[
            {{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","parentSpanId":"1112131415161718",
              "name":"files.Files/Read","kind":3,"events":[{events},{{"name":"exception","attributes":[]}}]}},
            {{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060709","name":"files.Files/Read","kind":2,
              "events":[{events}]}}]}}]}}]}}"#
        );
        let decoded = decode_json(json.as_bytes()).unwrap();
        assert_eq!(decoded.rejected_spans, 0);
        let (client, server) = (&decoded.spans[0], &decoded.spans[1]);
        assert_eq!((client.bytes, client.request_bytes), (1_000_000, 120));
        assert_eq!((server.bytes, server.request_bytes), (120, 1_000_000));
    }

    /// OTLP/JSON writes 64-bit integers as strings: a database call's rows read either way.
    #[test]
    fn a_database_calls_rows_are_its_payload() {
        let json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","parentSpanId":"1112131415161718",
             "name":"SELECT","kind":3,"attributes":[{"key":"db.system","value":{"stringValue":"postgresql"}},
             {"key":"db.response.returned_rows","value":{"intValue":"250000"}}]},
            {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060709","parentSpanId":"1112131415161718",
             "name":"GET","kind":3,"attributes":[{"key":"db.response.returned_rows","value":{"intValue":12}}]}]}]}]}"#;
        let decoded = decode_json(json.as_bytes()).unwrap();
        assert_eq!(decoded.rejected_spans, 0);
        // Rows are a database's payload only: on an HTTP call they say nothing.
        assert_eq!((decoded.spans[0].bytes, decoded.spans[1].bytes), (250_000, 0));
    }

    /// The recorded Python SDK traffic decodes completely, with old conventions mapped.
    #[test]
    fn python_sdk_fixture() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/python-sdk-flask-sqlite.otlp.jsonl.gz");
        let file = std::fs::File::open(path).expect("fixture missing");
        let reader = BufReader::new(flate2::read::GzDecoder::new(file));
        let (mut spans, mut rejected) = (Vec::new(), 0);
        for line in reader.lines() {
            let decoded = decode_json(line.unwrap().as_bytes()).unwrap();
            rejected += decoded.rejected_spans;
            spans.extend(decoded.spans);
        }
        assert_eq!(rejected, 0);
        assert_eq!(spans.len(), 7209);
        let db = spans.iter().filter(|s| s.remote.is_some_and(|r| r.kind == NodeKind::Database)).count();
        assert_eq!(db, 3731);
        let product = spans.iter().find(|s| s.operation.as_str() == "GET /product/<int:pid>").expect("gateway route");
        assert_eq!(product.kind, SpanKind::Server);
        assert!(product.client_address.is_some());
        let shaped =
            spans.iter().filter(|s| s.query_shape.is_some_and(|q| q.as_str() == "expand&page&page_size")).count();
        assert!(shaped > 0, "some /products requests carry expand=reviews");
    }

    /// The Python SDK behind a reverse proxy, capturing X-Forwarded-For (recorded by
    /// `scripts/record_proxy_fixture.py`): every request to the edge service names its real
    /// client, never the proxy, and a forged leftmost entry is not believed.
    #[test]
    fn python_sdk_behind_a_proxy_names_the_real_clients() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/python-sdk-behind-proxy.otlp.jsonl.gz");
        let file = std::fs::File::open(path).expect("fixture missing");
        let reader = BufReader::new(flate2::read::GzDecoder::new(file));
        let mut clients = std::collections::BTreeMap::new();
        for line in reader.lines() {
            let decoded = decode_json(line.unwrap().as_bytes()).unwrap();
            assert_eq!(decoded.rejected_spans, 0);
            for span in decoded.spans.iter().filter(|s| s.parent_span_id.is_none() && s.service.as_str() == "gateway") {
                let client = span.client_address.map_or("none", |c| c.as_str());
                *clients.entry((client.to_string(), span.query_shape.map(|q| q.as_str().to_string()))).or_insert(0) +=
                    1;
            }
        }
        let count = |client: &str, shape: &str| clients.get(&(client.to_string(), Some(shape.to_string()))).copied();
        // 120 ordinary requests, 25 of the rare class, 5 with a forged leftmost entry.
        assert_eq!(count("203.0.0.0/16 (x-forwarded-for)", "page"), Some(125), "{clients:?}");
        assert_eq!(count("198.51.0.0/16 (x-forwarded-for)", "expand&page_size"), Some(25), "{clients:?}");
        assert_eq!(clients.len(), 2, "the proxy or a forged address was named: {clients:?}");
    }

    #[test]
    fn captured_headers_as_arrays_or_strings_in_either_spelling() {
        let request = |attributes: &str| {
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"0102030405060708090a0b0c0d0e0f10",
                "spanId":"0102030405060708","name":"GET /","kind":2,"attributes":[{attributes}]}}]}}]}}]}}"#
            )
        };
        let client = |attributes: &str| {
            let text = request(attributes);
            let decoded = decode_json(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
            decoded.spans[0].client_address.map(|c| c.as_str().to_string())
        };
        let peer = r#"{"key":"network.peer.address","value":{"stringValue":"10.0.0.9"}}"#;
        let spec = r#"{"key":"http.request.header.x-forwarded-for","value":{"arrayValue":{"values":[{"stringValue":"198.51.100.4"},{"stringValue":"10.0.0.8"}]}}}"#;
        assert_eq!(client(&format!("{peer},{spec}")).as_deref(), Some("198.51.0.0/16 (x-forwarded-for)"));
        let plain = r#"{"key":"http.request.header.x_real_ip","value":{"stringValue":"203.0.113.9"}}"#;
        assert_eq!(client(&format!("{peer},{plain}")).as_deref(), Some("203.0.0.0/16 (x-real-ip)"));
        let forwarded = r#"{"key":"http.request.header.forwarded","value":{"arrayValue":{"values":[{"stringValue":"for=\"[2001:db8::7]:443\""}]}}}"#;
        assert_eq!(client(&format!("{peer},{forwarded}")).as_deref(), Some("2001:db8:0:0::/64 (forwarded)"));
        // A client known only by name is kept as that name.
        let named = r#"{"key":"client.address","value":{"stringValue":"kiosk-7.shop.internal"}}"#;
        assert_eq!(client(named).as_deref(), Some("kiosk-7.shop.internal (client.address)"));
        // From a peer that is no proxy, the header is a claim: the peer is the client.
        let stranger = r#"{"key":"network.peer.address","value":{"stringValue":"198.51.100.77"}}"#;
        assert_eq!(client(&format!("{stranger},{spec}")).as_deref(), Some("198.51.0.0/16 (network peer)"));
    }
}

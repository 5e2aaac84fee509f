//! Already-decoded prost `ExportTraceServiceRequest`s to spans: for callers that hold the
//! generated types, and the reference the borrowing wire decoder is tested against.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use stormwatch_model::{Dimension, Sym};

use crate::conventions::{push_span, service_name, AttrView, MessageEvent, RawLinks, RawSpan, WireId};
use crate::Decoded;

fn string_value(kv: &KeyValue) -> Option<&str> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text),
        _ => None,
    }
}

/// Converts an already decoded request (as the gRPC receiver gets it).
pub fn from_request(request: &ExportTraceServiceRequest) -> Decoded {
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
                    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(any_value::Value::StringValue(value)) => attrs.set(&kv.key, value),
                        Some(any_value::Value::IntValue(value)) => attrs.set_int(&kv.key, *value),
                        Some(any_value::Value::ArrayValue(array)) if AttrView::reads_array(&kv.key) => {
                            for value in &array.values {
                                if let Some(any_value::Value::StringValue(value)) = &value.value {
                                    attrs.set(&kv.key, value);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                for event in &span.events {
                    let mut message = MessageEvent::default();
                    for kv in &event.attributes {
                        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(value)) => message.set(&kv.key, value),
                            Some(any_value::Value::IntValue(value)) => message.set_int(&kv.key, *value),
                            _ => {}
                        }
                    }
                    attrs.message(&message);
                }
                let is_error = span.status.as_ref().is_some_and(|status| status.code == StatusCode::Error as i32);
                let raw = RawSpan {
                    trace_id: WireId::Bytes(&span.trace_id),
                    span_id: WireId::Bytes(&span.span_id),
                    parent_span_id: WireId::Bytes(&span.parent_span_id),
                    service,
                    name: &span.name,
                    kind: span.kind,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    is_error,
                    trace_state: &span.trace_state,
                    links: if span.links.is_empty() {
                        RawLinks::None
                    } else {
                        RawLinks::Ids(span.links.iter().map(|link| WireId::Bytes(&link.trace_id)).collect())
                    },
                };
                push_span(&mut decoded, raw, &attrs);
            }
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan};

    use prost::Message;

    use super::*;
    use stormwatch_model::SpanKind;

    use crate::decode_protobuf;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<ProtoSpan>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", "gateway")], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn decodes_and_maps_conventions() {
        let span = ProtoSpan {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET".into(),
            kind: 2,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![
                kv("http.request.method", "GET"),
                kv("http.route", "/products"),
                kv("url.query", "page=3&expand=reviews"),
                kv("enduser.id", "alice"),
                KeyValue {
                    key: "http.response.body.size".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::IntValue(48_213)) }),
                    ..Default::default()
                },
                KeyValue {
                    key: "http.request.body.size".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::IntValue(312)) }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let bytes = request(vec![span]).encode_to_vec();
        let decoded = decode_protobuf(&bytes).unwrap();
        assert_eq!(decoded.rejected_spans, 0);
        let span = &decoded.spans[0];
        assert_eq!(span.service.as_str(), "gateway");
        assert_eq!(span.operation.as_str(), "GET /products");
        assert_eq!(span.query_shape.unwrap().as_str(), "expand&page");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.user.unwrap().as_str(), "alice");
        assert_eq!((span.bytes, span.request_bytes), (48_213, 312));
    }

    /// A database call's payload is the rows it returned, in the borrowing decoder and in
    /// prost's, whatever bytes it also reports; one that reports no rows has none.
    #[test]
    fn a_database_calls_payload_is_the_rows_it_returned() {
        let int = |key: &str, value: i64| KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
            ..Default::default()
        };
        let query = |span: u8, rows: Option<i64>| ProtoSpan {
            trace_id: vec![1; 16],
            span_id: vec![span; 8],
            parent_span_id: vec![9; 8],
            name: "SELECT notes".into(),
            kind: 3,
            attributes: [
                kv("db.system.name", "postgresql"),
                kv("db.query.text", "SELECT id FROM notes WHERE body LIKE $1"),
            ]
            .into_iter()
            .chain(rows.map(|rows| int("db.response.returned_rows", rows)))
            .chain([int("http.response.body.size", 7)])
            .collect(),
            ..Default::default()
        };
        let request = request(vec![query(2, Some(48_213)), query(3, None), query(4, Some(1 << 40))]);
        for decoded in [decode_protobuf(&request.encode_to_vec()).unwrap(), from_request(&request)] {
            let payloads: Vec<u32> = decoded.spans.iter().map(|span| span.bytes).collect();
            assert_eq!(payloads, [48_213, 0, u32::MAX], "rows, saturated");
            assert_eq!(decoded.spans[0].remote.unwrap().kind.payload_unit(), stormwatch_model::PayloadUnit::Rows);
        }
    }

    /// node-postgres reports each pool checkout and connection as a client span of the
    /// database: they query nothing, so they are no calls (the query beside them is).
    #[test]
    fn a_database_span_that_only_connects_is_no_call() {
        let span = |id: u8, name: &str, statement: Option<&str>| ProtoSpan {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            parent_span_id: vec![9; 8],
            name: name.into(),
            kind: 3,
            attributes: [kv("db.system", "postgresql"), kv("db.name", "shop")]
                .into_iter()
                .chain(statement.map(|text| kv("db.statement", text)))
                .collect(),
            ..Default::default()
        };
        let request = request(vec![
            span(2, "pg-pool.connect", None),
            span(3, "pg.connect", None),
            span(4, "pg.query:SELECT shop", Some("SELECT available FROM stock WHERE product_id = $1")),
            span(5, "connect", Some("SELECT 1")),
        ]);
        for decoded in [decode_protobuf(&request.encode_to_vec()).unwrap(), from_request(&request)] {
            let kinds: Vec<(SpanKind, bool)> = decoded.spans.iter().map(|s| (s.kind, s.remote.is_some())).collect();
            assert_eq!(
                kinds,
                [
                    (SpanKind::Internal, false),
                    (SpanKind::Internal, false),
                    (SpanKind::Client, true),
                    (SpanKind::Client, true)
                ]
            );
        }
    }

    #[test]
    fn bad_ids_are_rejected_one_by_one() {
        let good = ProtoSpan { trace_id: vec![1; 16], span_id: vec![2; 8], name: "ok".into(), ..Default::default() };
        let short = ProtoSpan { trace_id: vec![1; 8], span_id: vec![2; 8], name: "short".into(), ..Default::default() };
        let zero = ProtoSpan { trace_id: vec![1; 16], span_id: vec![0; 8], name: "zero".into(), ..Default::default() };
        let decoded = from_request(&request(vec![good, short, zero]));
        assert_eq!(decoded.spans.len(), 1);
        assert_eq!(decoded.rejected_spans, 2);
        assert_eq!(
            decoded.rejection_message(),
            "2 spans rejected; first: span \"short\": trace_id: expected 16 bytes, found 8"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_protobuf(b"\xff\xff\xff\xff not protobuf").is_err());
    }
}

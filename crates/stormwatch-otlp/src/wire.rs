//! A borrowing protobuf decoder for `ExportTraceServiceRequest`: it reads only the fields the
//! engine uses and takes strings as `&str` slices of the request, so decoding a span
//! allocates no `String` (prost would allocate one for every name, key and value).
//! Unknown fields are skipped, as protobuf requires. The result must equal prost's decoding
//! followed by [`crate::from_request`]; a property test holds the two together.

use stormwatch_model::{Dimension, Sym};

use crate::conventions::{push_span, AttrView, MessageEvent, RawLinks, RawSpan, WireId, UNKNOWN_SERVICE};
use crate::{DecodeError, Decoded, Result};

/// One protobuf field value.
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

struct Fields<'a> {
    buf: &'a [u8],
    /// Where this message started, for error messages.
    what: &'static str,
}

fn error(what: &str, reason: &str) -> DecodeError {
    DecodeError::Wire(format!("{what}: {reason}"))
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Fields<'a> {
        Fields { buf, what }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(error(self.what, "truncated varint"));
            };
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(error(self.what, "varint longer than 10 bytes"))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.buf.len() {
            return Err(error(self.what, "field length past the end of the message"));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(error(self.what, "field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| error(self.what, "length overflow"))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            other => return Err(error(self.what, &format!("unsupported wire type {other}"))),
        };
        Ok(Some((number, value)))
    }
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| error(what, "string is not valid UTF-8"))
}

/// The attribute values the engine reads.
#[derive(Clone, Copy)]
enum Attribute<'a> {
    String(&'a str),
    Int(i64),
    /// An `ArrayValue`, undecoded.
    Array(&'a [u8]),
    Other,
}

/// The strings of an `ArrayValue` (other members are skipped), each passed to `each`.
fn array_strings<'a>(array: &'a [u8], mut each: impl FnMut(&'a str)) -> Result<()> {
    let mut values = Fields::new(array, "ArrayValue");
    while let Some((number, field)) = values.next()? {
        let (1, Value::Bytes(any)) = (number, field) else { continue };
        let mut any = Fields::new(any, "AnyValue");
        while let Some((number, field)) = any.next()? {
            if let (1, Value::Bytes(s)) = (number, field) {
                each(utf8(s, "AnyValue.string_value")?);
            }
        }
    }
    Ok(())
}

/// (key, value) of a `KeyValue`.
fn key_value(bytes: &[u8]) -> Result<(&str, Attribute<'_>)> {
    let mut key = "";
    let mut value = Attribute::Other;
    let mut fields = Fields::new(bytes, "KeyValue");
    while let Some((number, field)) = fields.next()? {
        match (number, field) {
            (1, Value::Bytes(b)) => key = utf8(b, "KeyValue.key")?,
            (2, Value::Bytes(b)) => {
                value = Attribute::Other;
                let mut any = Fields::new(b, "AnyValue");
                while let Some((number, field)) = any.next()? {
                    match (number, field) {
                        (1, Value::Bytes(s)) => value = Attribute::String(utf8(s, "AnyValue.string_value")?),
                        (3, Value::Varint(v)) => value = Attribute::Int(v as i64),
                        (5, Value::Bytes(array)) => value = Attribute::Array(array),
                        // Another member of the oneof.
                        (2..=8, _) => value = Attribute::Other,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// The resource's `service.name`: the last non-empty string one (as every decoder reads it),
/// `None` when there is none.
fn service_name(resource: &[u8]) -> Result<Option<&str>> {
    let mut name = None;
    let mut fields = Fields::new(resource, "Resource");
    while let Some((number, field)) = fields.next()? {
        if let (1, Value::Bytes(b)) = (number, field) {
            if let ("service.name", Attribute::String(value)) = key_value(b)? {
                if !value.is_empty() {
                    name = Some(value);
                }
            }
        }
    }
    Ok(name)
}

fn decode_span(bytes: &[u8], service: Sym, decoded: &mut Decoded) -> Result<()> {
    let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut name, mut trace_state) = ("", "");
    let (mut kind, mut start, mut end, mut is_error) = (0i32, 0u64, 0u64, false);
    let mut attrs = AttrView::default();
    let mut links = RawLinks::None;
    let mut fields = Fields::new(bytes, "Span");
    while let Some((number, field)) = fields.next()? {
        match (number, field) {
            (1, Value::Bytes(b)) => trace_id = b,
            (2, Value::Bytes(b)) => span_id = b,
            (3, Value::Bytes(b)) => trace_state = utf8(b, "Span.trace_state")?,
            (4, Value::Bytes(b)) => parent = b,
            (5, Value::Bytes(b)) => name = utf8(b, "Span.name")?,
            (6, Value::Varint(v)) => kind = v as i32,
            (7, Value::Fixed64(v)) => start = v,
            (8, Value::Fixed64(v)) => end = v,
            (9, Value::Bytes(b)) => match key_value(b)? {
                (key, Attribute::String(value)) => attrs.set(key, value),
                (key, Attribute::Int(value)) => attrs.set_int(key, value),
                (key, Attribute::Array(array)) if AttrView::reads_array(key) => {
                    array_strings(array, |value| attrs.set(key, value))?;
                }
                (_, Attribute::Array(_) | Attribute::Other) => {}
            },
            (11, Value::Bytes(event)) => attrs.message(&message_event(event)?),
            (13, Value::Bytes(_)) => links = RawLinks::Wire(bytes),
            (15, Value::Bytes(b)) => {
                let mut status = Fields::new(b, "Status");
                is_error = false;
                while let Some((number, field)) = status.next()? {
                    if let (3, Value::Varint(code)) = (number, field) {
                        is_error = code as i32 == 2;
                    }
                }
            }
            _ => {}
        }
    }
    let raw = RawSpan {
        trace_id: WireId::Bytes(trace_id),
        span_id: WireId::Bytes(span_id),
        parent_span_id: WireId::Bytes(parent),
        service,
        name,
        kind,
        start_unix_nano: start,
        end_unix_nano: end,
        is_error,
        trace_state,
        links,
    };
    push_span(decoded, raw, &attrs);
    Ok(())
}

/// A span event's RPC message direction and size (`Span.Event`: attributes are field 3).
fn message_event(bytes: &[u8]) -> Result<MessageEvent> {
    let mut event = MessageEvent::default();
    let mut fields = Fields::new(bytes, "Span.Event");
    while let Some((number, field)) = fields.next()? {
        if let (3, Value::Bytes(b)) = (number, field) {
            match key_value(b)? {
                (key, Attribute::String(value)) => event.set(key, value),
                (key, Attribute::Int(value)) => event.set_int(key, value),
                _ => {}
            }
        }
    }
    Ok(event)
}

/// Calls `each` with the trace id of every link of a protobuf `Span` message whose fields
/// were already read once; a link that does not parse is passed as empty bytes (an invalid id).
pub(crate) fn link_trace_ids(span: &[u8], each: &mut dyn FnMut(&[u8])) {
    let mut fields = Fields::new(span, "Span");
    while let Ok(Some((number, field))) = fields.next() {
        let (13, Value::Bytes(link)) = (number, field) else { continue };
        let mut trace_id: &[u8] = &[];
        let mut link_fields = Fields::new(link, "Span.Link");
        loop {
            match link_fields.next() {
                Ok(Some((1, Value::Bytes(id)))) => trace_id = id,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    trace_id = &[];
                    break;
                }
            }
        }
        each(trace_id);
    }
}

/// Decodes a protobuf-encoded `ExportTraceServiceRequest`.
pub fn decode_protobuf(bytes: &[u8]) -> Result<Decoded> {
    let mut decoded = Decoded::default();
    let mut request = Fields::new(bytes, "ExportTraceServiceRequest");
    while let Some((number, field)) = request.next()? {
        let (1, Value::Bytes(resource_spans)) = (number, field) else { continue };
        // The resource may follow the spans on the wire: find it first.
        let mut resource = None;
        let mut fields = Fields::new(resource_spans, "ResourceSpans");
        while let Some((number, field)) = fields.next()? {
            if let (1, Value::Bytes(b)) = (number, field) {
                resource = Some(b);
            }
        }
        let service = match resource {
            Some(resource) => service_name(resource)?,
            None => None,
        };
        let service = Sym::bounded(Dimension::Service, service.unwrap_or(UNKNOWN_SERVICE));
        let mut fields = Fields::new(resource_spans, "ResourceSpans");
        while let Some((number, field)) = fields.next()? {
            let (2, Value::Bytes(scope_spans)) = (number, field) else { continue };
            let mut scope = Fields::new(scope_spans, "ScopeSpans");
            while let Some((number, field)) = scope.next()? {
                if let (2, Value::Bytes(span)) = (number, field) {
                    decode_span(span, service, &mut decoded)?;
                }
            }
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use proptest::prelude::*;
    use prost::Message;

    use super::decode_protobuf;

    const KEYS: &[&str] = &[
        "service.name",
        "http.method",
        "http.request.method",
        "http.route",
        "http.target",
        "url.query",
        "db.system",
        "db.system.name",
        "db.statement",
        "db.query.text",
        "db.name",
        "peer.service",
        "server.address",
        "messaging.system",
        "net.peer.ip",
        "enduser.id",
        "http.response.body.size",
        "http.response_content_length",
        "http.request.body.size",
        "http.request_content_length",
        "http.request.resend_count",
        "db.response.returned_rows",
        "other",
    ];

    fn attribute() -> impl Strategy<Value = KeyValue> {
        (prop::sample::select(KEYS), "[ -~]{0,24}", 0u8..4).prop_map(|(key, text, variant)| KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: match variant {
                    0 => None,
                    1 => Some(any_value::Value::IntValue(7)),
                    _ => Some(any_value::Value::StringValue(text)),
                },
            }),
            ..Default::default()
        })
    }

    fn id(lengths: &'static [usize]) -> impl Strategy<Value = Vec<u8>> {
        prop::sample::select(lengths).prop_flat_map(|len| prop::collection::vec(any::<u8>(), len))
    }

    fn span() -> impl Strategy<Value = Span> {
        (
            id(&[16, 16, 16, 8]),
            id(&[8, 8, 8, 0]),
            id(&[0, 8, 8, 3]),
            "[ -~]{0,16}",
            0i32..7,
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(attribute(), 0..6),
            prop::option::of(0i32..3),
            prop::sample::select(vec!["", "ot=th:8", "ot=p:3", "vendor=1,ot=rv:ab;th:e668", "ot=th:zz"]),
            // RPC message events, complete or not, among others.
            prop::collection::vec(
                (prop::sample::select(vec!["SENT", "RECEIVED", "OTHER"]), prop::option::of(0i64..5_000), any::<bool>())
                    .prop_map(|(direction, size, old)| {
                        let (type_key, size_key) = if old {
                            ("message.type", "message.uncompressed_size")
                        } else {
                            ("rpc.message.type", "rpc.message.uncompressed_size")
                        };
                        let mut attributes = vec![KeyValue {
                            key: type_key.into(),
                            value: Some(AnyValue { value: Some(any_value::Value::StringValue(direction.into())) }),
                            ..Default::default()
                        }];
                        if let Some(size) = size {
                            attributes.push(KeyValue {
                                key: size_key.into(),
                                value: Some(AnyValue { value: Some(any_value::Value::IntValue(size)) }),
                                ..Default::default()
                            });
                        }
                        Event { name: "message".into(), attributes, ..Default::default() }
                    }),
                0..4,
            ),
            // Few distinct linked traces, so repeats and the bound are both exercised.
            prop::collection::vec(
                prop::sample::select(vec![vec![1u8; 16], vec![2u8; 16], vec![3u8; 15], vec![]])
                    .prop_map(|trace_id| Link { trace_id, span_id: vec![9; 8], ..Default::default() }),
                0..12,
            ),
        )
            .prop_map(
                |(
                    trace_id,
                    span_id,
                    parent_span_id,
                    name,
                    kind,
                    start,
                    end,
                    attributes,
                    status,
                    state,
                    events,
                    links,
                )| Span {
                    links,
                    events,
                    trace_id,
                    span_id,
                    trace_state: state.to_string(),
                    parent_span_id,
                    name,
                    kind,
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    attributes,
                    status: status.map(|code| Status { code, ..Default::default() }),
                    ..Default::default()
                },
            )
    }

    fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
        let resource_spans = (
            prop::option::of(prop::collection::vec(attribute(), 0..4)),
            prop::collection::vec(prop::collection::vec(span(), 0..4), 0..3),
        )
            .prop_map(|(resource, scopes)| ResourceSpans {
                resource: resource.map(|attributes| Resource { attributes, ..Default::default() }),
                scope_spans: scopes.into_iter().map(|spans| ScopeSpans { spans, ..Default::default() }).collect(),
                ..Default::default()
            });
        prop::collection::vec(resource_spans, 0..3)
            .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
    }

    proptest! {
        #[test]
        fn agrees_with_prost(request in request()) {
            let bytes = request.encode_to_vec();
            let ours = decode_protobuf(&bytes).expect("valid protobuf");
            let reference = crate::from_request(&ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap());
            prop_assert_eq!(&ours.spans, &reference.spans);
            prop_assert_eq!(ours.rejected_spans, reference.rejected_spans);
            prop_assert_eq!(ours.rejection_message(), reference.rejection_message());
        }

        #[test]
        fn truncated_requests_are_errors_not_panics(request in request(), cut in any::<prop::sample::Index>()) {
            let bytes = request.encode_to_vec();
            if !bytes.is_empty() {
                let _ = decode_protobuf(&bytes[..cut.index(bytes.len())]);
            }
        }
    }

    /// A captured header's array value (the Python SDK's shape) reaches the client.
    #[test]
    fn captured_header_arrays_are_read() {
        let text = |value: &str| AnyValue { value: Some(any_value::Value::StringValue(value.into())) };
        let attribute =
            |key: &str, value: AnyValue| KeyValue { key: key.into(), value: Some(value), ..Default::default() };
        let forwarded_for = AnyValue {
            value: Some(any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: vec![text("198.51.100.23, 127.0.0.1")],
            })),
        };
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            kind: 2,
            name: "GET /products".into(),
            attributes: vec![
                attribute("net.peer.ip", text("127.0.0.1")),
                attribute("http.request.header.x_forwarded_for", forwarded_for),
            ],
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
                ..Default::default()
            }],
        };
        let bytes = request.encode_to_vec();
        let wire = decode_protobuf(&bytes).unwrap();
        let typed = crate::from_request(&request);
        for decoded in [wire, typed] {
            let client = decoded.spans[0].client_address.map(|c| c.as_str().to_string());
            assert_eq!(client.as_deref(), Some("198.51.0.0/16 (x-forwarded-for)"));
        }
    }

    #[test]
    fn resource_after_spans_still_names_the_service() {
        // Field order on the wire is not guaranteed: encode scope_spans before resource.
        let mut span_bytes = Vec::new();
        Span { trace_id: vec![1; 16], span_id: vec![2; 8], name: "op".into(), ..Default::default() }
            .encode(&mut span_bytes)
            .unwrap();
        let scope = ScopeSpans { spans: vec![Span::decode(span_bytes.as_slice()).unwrap()], ..Default::default() };
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue { value: Some(any_value::Value::StringValue("late".into())) }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut resource_spans = Vec::new();
        prost::encoding::message::encode(2, &scope, &mut resource_spans);
        prost::encoding::message::encode(1, &resource, &mut resource_spans);
        let mut request = Vec::new();
        prost::encoding::bytes::encode(1, &resource_spans, &mut request);
        let decoded = decode_protobuf(&request).unwrap();
        assert_eq!(decoded.spans[0].service.as_str(), "late");
    }
}

"""OpenTelemetry for the Python services: the official SDK, exporting OTLP/HTTP protobuf to
the collector (OTEL_EXPORTER_OTLP_ENDPOINT), with the official Flask, psycopg, redis,
requests and confluent-kafka instrumentations."""

import os

from confluent_kafka import Consumer, Producer
from opentelemetry import trace
from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def instrument(app, service):
    """The SDK, and the instrumentations of a Flask `app` (None for a service without one)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if app is not None:
        FlaskInstrumentor().instrument_app(app)
    # The statement text, with its literals as parameters: what the engine groups calls by.
    PsycopgInstrumentor().instrument(enable_commenter=False)
    RedisInstrumentor().instrument()
    RequestsInstrumentor().instrument()


def database_url():
    return os.environ["STACK_DATABASE_URL"]


def kafka_producer():
    """A Kafka producer whose sends are PRODUCER spans, the trace context in each message's
    headers."""
    producer = Producer({"bootstrap.servers": os.environ["STACK_KAFKA_BOOTSTRAP"], "linger.ms": 5})
    return ConfluentKafkaInstrumentor().instrument_producer(producer)


def kafka_consumer(group):
    """A Kafka consumer whose polls are CONSUMER spans: each message processed in a span
    linked to its producer's (span links, the batch-receive style)."""
    consumer = Consumer({
        "bootstrap.servers": os.environ["STACK_KAFKA_BOOTSTRAP"],
        "group.id": group,
        "auto.offset.reset": "earliest",
    })
    return ConfluentKafkaInstrumentor().instrument_consumer(consumer)


def shares_topic():
    return os.environ["STACK_SHARES_TOPIC"]

#!/usr/bin/env python3
"""Records tests/fixtures/python-sdk-behind-proxy.otlp.jsonl.gz: two Flask services instrumented
by the official OpenTelemetry Python SDK, the edge one behind a reverse proxy, capturing
X-Forwarded-For with the SDK's standard setting

    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=X-Forwarded-For

(which the Python SDK records as `http.request.header.x_forwarded_for`, an array of strings).

    driver --(X-Forwarded-For: <client>)--> proxy --(appends 127.0.0.1)--> gateway --> catalog

The driver stands for the load balancer in front of the proxy: it writes the client's address
into X-Forwarded-For, and the proxy appends the address it saw, as nginx's
`$proxy_add_x_forwarded_for` does. The gateway's network peer is the proxy (127.0.0.1, a trusted
proxy by default); the real clients are 203.0.113.0/24 (ordinary traffic, `GET /products`) and
198.51.100.0/24 (a burst of `GET /products?expand=reviews&page_size=...`, which calls catalog
once per listed item). A few requests arrive with a forged leftmost entry
(`X-Forwarded-For: 10.6.6.6, <client>`), which must not be believed.

The services export OTLP/HTTP (protobuf) with the SDK's own exporter to a small receiver here,
which writes each export request as one OTLP/JSON line (the Collector file exporter's format:
hex ids, int64 as strings, enums as integers). Needs Python 3 and, in its environment:

    pip install flask requests opentelemetry-sdk opentelemetry-exporter-otlp-proto-http \
        opentelemetry-instrumentation-flask opentelemetry-instrumentation-requests

Recorded with opentelemetry-sdk 1.45.2 and the flask and requests instrumentations 0.66b1,
old (default) semantic conventions. Run from the repository root:

    python3 scripts/record_proxy_fixture.py
"""
import base64
import gzip
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

OUTPUT = "tests/fixtures/python-sdk-behind-proxy.otlp.jsonl.gz"


def serve_app(role):
    """A service: catalog (`GET /items`, `GET /reviews/<int:item>`) or gateway."""
    from flask import Flask, request
    import requests
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from werkzeug.serving import make_server

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    provider = TracerProvider(resource=Resource.create({"service.name": role}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    RequestsInstrumentor().instrument()
    app = Flask(role)
    FlaskInstrumentor().instrument_app(app)
    catalog = os.environ.get("CATALOG_URL", "")
    session = requests.Session()

    @app.get("/items")
    def items():
        return {"items": list(range(int(request.args.get("page_size", "10"))))}

    @app.get("/reviews/<int:item>")
    def reviews(item):
        return {"item": item, "reviews": []}

    @app.get("/products")
    def products():
        page_size = int(request.args.get("page_size", "10"))
        listed = session.get(f"{catalog}/items", params={"page_size": page_size}).json()["items"]
        if request.args.get("expand") == "reviews":
            for item in listed:
                session.get(f"{catalog}/reviews/{item}")
        return {"products": len(listed)}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the parent closes our stdin
    server.shutdown()
    provider.shutdown()


class Recorder(http.server.ThreadingHTTPServer):
    """Receives OTLP/HTTP protobuf exports and keeps them as OTLP/JSON lines."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RecordHandler)
        self.lines = []
        self.lock = threading.Lock()


class RecordHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        from google.protobuf.json_format import MessageToDict
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        document = MessageToDict(request, use_integers_for_enums=True)
        for resource in document.get("resourceSpans", []):
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    for field in ("traceId", "spanId", "parentSpanId"):
                        if field in span:
                            span[field] = base64.b64decode(span[field]).hex()
        with self.server.lock:
            self.server.lines.append(json.dumps(document, separators=(",", ":")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Proxy(http.server.ThreadingHTTPServer):
    def __init__(self, upstream_port):
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream_port = upstream_port


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A reverse proxy: forwards GETs, appending the peer to X-Forwarded-For."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        forwarded = self.headers.get("X-Forwarded-For")
        peer = self.client_address[0]
        headers = {"X-Forwarded-For": f"{forwarded}, {peer}" if forwarded else peer}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port)
        upstream.request("GET", self.path, headers=headers)
        response = upstream.getresponse()
        body = response.read()
        upstream.close()
        self.send_response(response.status)
        self.send_header("Content-Type", response.getheader("Content-Type", "text/plain"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_service(role, recorder_port, extra_env):
    env = dict(os.environ)
    env.update(extra_env)
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{recorder_port}/v1/traces"
    env["OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"] = "X-Forwarded-For"
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", role], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    port = int(child.stdout.readline())
    return child, port


def get(port, path, forwarded_for):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Forwarded-For": forwarded_for})
    with urllib.request.urlopen(request) as response:
        response.read()


def main():
    recorder = Recorder()
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    catalog, catalog_port = start_service("catalog", recorder.server_port, {})
    gateway, gateway_port = start_service(
        "gateway", recorder.server_port, {"CATALOG_URL": f"http://127.0.0.1:{catalog_port}"}
    )
    proxy = Proxy(gateway_port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    port = proxy.server_port
    # Ordinary traffic from 40 clients, then a burst of the rare class from 25 others, then a
    # few requests whose leftmost entry is forged.
    for i in range(120):
        get(port, "/products?page=1", f"203.0.113.{i % 40 + 1}")
    for i in range(25):
        get(port, "/products?expand=reviews&page_size=20", f"198.51.100.{i + 1}")
    for i in range(5):
        get(port, "/products?page=2", f"10.6.6.6, 203.0.113.{200 + i}")
    time.sleep(2)
    for child in (gateway, catalog):
        child.stdin.close()
        child.wait(timeout=30)
    recorder.shutdown()
    with gzip.GzipFile(OUTPUT, "wb", mtime=0) as out:
        for line in recorder.lines:
            out.write(line.encode() + b"\n")
    spans = sum(line.count('"spanId"') for line in recorder.lines)
    print(f"{OUTPUT}: {len(recorder.lines)} export requests, {spans} spans")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve_app(sys.argv[2])
    else:
        main()

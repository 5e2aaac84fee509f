#!/usr/bin/env python3
"""Builds tests/fixtures/flask-amplified.otlp.jsonl.gz: the recorded Python SDK traffic
(tests/fixtures/python-sdk-flask-sqlite.otlp.jsonl.gz, 40 s, all normal) followed by a few
amplified requests cloned from a real `GET /product/<int:pid>` trace of that recording:

  n_plus_one_400   reviews looks up authors 400 times under one `GET /reviews` span
  fanout_60        gateway calls reviews 60 times under one `GET /product` span
  n_plus_one_250   the N+1 again (same incident: folded into a throttled summary)

and a last ordinary request so the attacks complete on event time. The labels (trace id ->
kind, edge) go to tests/fixtures/flask-amplified.labels.json. Deterministic: the same input
gives byte-identical output. Run from the repository root:

    python3 scripts/make_amplified_fixture.py
"""
import copy
import gzip
import json
import random

SOURCE = "tests/fixtures/python-sdk-flask-sqlite.otlp.jsonl.gz"
OUTPUT = "tests/fixtures/flask-amplified.otlp.jsonl.gz"
LABELS = "tests/fixtures/flask-amplified.labels.json"

rng = random.Random(20261128)


def new_id(nbytes):
    return "".join(f"{rng.randrange(256):02x}" for _ in range(nbytes))


def main():
    with gzip.open(SOURCE, "rt") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]

    # Index spans by trace, remembering each span's resource and scope.
    traces = {}
    last_end = 0
    for line in lines:
        request = json.loads(line)
        for rs in request["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    traces.setdefault(span["traceId"], []).append((rs["resource"], ss["scope"], span))
                    last_end = max(last_end, int(span["endTimeUnixNano"]))

    def is_product(spans):
        names = [s["name"] for _, _, s in spans]
        return "GET /product/<int:pid>" in names and "GET /reviews" in names and len(spans) >= 8

    template_id = sorted(tid for tid, spans in traces.items() if is_product(spans))[0]
    template = traces[template_id]
    root_start = min(int(s["startTimeUnixNano"]) for _, _, s in template)

    def clone(spans, start):
        """A copy with fresh ids, shifted to start at `start`."""
        trace_id = new_id(16)
        ids = {}
        out = []
        for resource, scope, span in spans:
            ids.setdefault(span["spanId"], new_id(8))
        for resource, scope, span in spans:
            s = copy.deepcopy(span)
            s["traceId"] = trace_id
            s["spanId"] = ids[span["spanId"]]
            if span.get("parentSpanId"):
                s["parentSpanId"] = ids.get(span["parentSpanId"], span["parentSpanId"])
            shift = start - root_start
            s["startTimeUnixNano"] = str(int(span["startTimeUnixNano"]) + shift)
            s["endTimeUnixNano"] = str(int(span["endTimeUnixNano"]) + shift)
            out.append((resource, scope, s))
        return trace_id, out

    def find(spans, predicate):
        return [entry for entry in spans if predicate(entry[2])]

    def statement(span):
        for a in span.get("attributes", []):
            if a["key"] == "db.statement":
                return a["value"].get("stringValue")
        return None

    def repeat(spans, entry, times):
        """Adds copies of one span (fresh span ids, same parent) so it appears `times` times."""
        existing = sum(1 for _, _, s in spans if statement(s) == statement(entry[2]) and s.get("parentSpanId") == entry[2].get("parentSpanId"))
        for _ in range(times - existing):
            resource, scope, span = entry
            s = copy.deepcopy(span)
            s["spanId"] = new_id(8)
            spans.append((resource, scope, s))

    def subtree(spans, top_id):
        keep, frontier = [], {top_id}
        while frontier:
            level = [e for e in spans if e[2]["spanId"] in frontier]
            keep.extend(level)
            frontier = {e[2]["spanId"] for e in spans if e[2].get("parentSpanId") in {x[2]["spanId"] for x in level}}
        return keep

    attacks = []
    t = last_end + 10 * 10**9

    # 1. N+1 at 400.
    trace_id, spans = clone(template, t)
    author = find(spans, lambda s: statement(s) == "SELECT name FROM users WHERE id = ?")[0]
    repeat(spans, author, 400)
    attacks.append(("n_plus_one_400", trace_id, spans))

    # 2. Fan-out: the gateway calls reviews 60 times under its root span.
    trace_id, spans = clone(template, t + 2 * 10**9)
    reviews_server = find(spans, lambda s: s["name"] == "GET /reviews")[0]
    client_id = reviews_server[2]["parentSpanId"]
    client = find(spans, lambda s: s["spanId"] == client_id)[0]
    branch = [client] + subtree(spans, reviews_server[2]["spanId"])
    for _ in range(59):
        mapping = {}
        for _, _, s in branch:
            mapping[s["spanId"]] = new_id(8)
        for resource, scope, s in branch:
            c = copy.deepcopy(s)
            c["spanId"] = mapping[s["spanId"]]
            if s.get("parentSpanId") in mapping:
                c["parentSpanId"] = mapping[s["parentSpanId"]]
            spans.append((resource, scope, c))
    attacks.append(("fanout_60", trace_id, spans))

    # 3. The N+1 again, smaller: a repeat of incident 1.
    trace_id, spans = clone(template, t + 4 * 10**9)
    author = find(spans, lambda s: statement(s) == "SELECT name FROM users WHERE id = ?")[0]
    repeat(spans, author, 250)
    attacks.append(("n_plus_one_250", trace_id, spans))

    # 4. An ordinary request 10 s later moves event time past the attacks' idle window.
    trace_id, spans = clone(template, t + 14 * 10**9)
    attacks.append(("normal", trace_id, spans))

    def to_line(spans):
        """One export request per service, as the SDKs send them."""
        by_service = {}
        for resource, scope, span in spans:
            key = json.dumps(resource, sort_keys=True)
            by_service.setdefault(key, (resource, scope, []))[2].append(span)
        return json.dumps({"resourceSpans": [
            {"resource": resource, "scopeSpans": [{"scope": scope, "spans": spans_}]}
            for resource, scope, spans_ in by_service.values()
        ]}, separators=(",", ":"))

    out_lines = list(lines)
    labels = []
    for name, trace_id, spans in attacks:
        out_lines.append(to_line(spans))
        labels.append({"name": name, "trace_id": trace_id, "spans": len(spans)})

    with gzip.GzipFile(OUTPUT, "wb", mtime=0) as f:
        f.write(("\n".join(out_lines) + "\n").encode())
    with open(LABELS, "w") as f:
        json.dump({"source": SOURCE, "template_trace_id": template_id, "requests": labels}, f, indent=2)
        f.write("\n")
    print(f"wrote {OUTPUT} ({len(out_lines)} lines) and {LABELS}")


if __name__ == "__main__":
    main()

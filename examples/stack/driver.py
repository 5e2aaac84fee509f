"""The example stack's attack driver: ordinary shoppers all along, and labelled phases of
attacks, a legitimate flash crowd and calm between them. It writes the ground truth and scores
the engine's alerts against it: each attack detected (by one of the kinds it should raise, in
time) with its time to detect, each legitimate change quiet, and the false alerts per hour.

Exit status 0 when every attack was detected and no warning or critical alert came outside
the attacks (and their grace), 1 otherwise."""

import argparse
import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests

# (name, kind, detect_as): what each phase does is in `attack_streams`.
ATTACKS = [
    ("page-size-abuse", "fanout", ["fanout_amplification", "request_amplification"]),
    ("n-plus-one-rare-endpoint", "n_plus_one", ["n_plus_one"]),
    ("cache-key-busting", "cache_bypass", ["cache_bypass", "aggregate_amplification"]),
    ("retry-storm", "retry_storm", ["retry_storm"]),
    ("scanning-search", "scanning_query", ["cost_amplification"]),
    ("rare-class-surge", "mix_shift", ["aggregate_amplification"]),
]
LEGITIMATE = [("flash-crowd", "flash_crowd")]
TIMINGS = {
    # warm-up, each phase, calm after each, grace for an alert after its phase ends (seconds).
    # crowd: the flash crowd's extra traffic, in multiples of the ordinary rate.
    "full": {"warm_up": 360, "phase": 90, "calm": 60, "grace": 45, "rate": 25.0, "crowd": 2.0},
    "short": {"warm_up": 80, "phase": 30, "calm": 5, "grace": 30, "rate": 30.0, "crowd": 1.0},
}
CLIENTS = [f"10.{20 + i // 250}.{i % 250}.{1 + i * 7 % 250}" for i in range(300)]
SURGE_CLIENTS = [f"172.{16 + i // 250}.{i % 250}.9" for i in range(500)]


class Driver:
    def __init__(self, web, inventory):
        self.web = web
        self.inventory = inventory
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=96)
        self.sent = itertools.count()
        self.failed = itertools.count()

    def session(self):
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def call(self, method, path, client, body=None):
        try:
            self.session().request(
                method, self.web + path, json=body, headers={"x-forwarded-for": client}, timeout=30
            )
            next(self.sent)
        except requests.RequestException:
            next(self.failed)

    def stream(self, rate, make, until):
        """Poisson arrivals at `rate` a second of the requests `make()` returns, until `until`."""
        rng = random.Random(hash((rate, until)))
        at = time.time()
        while at < until:
            at += rng.expovariate(rate)
            wait = at - time.time()
            if wait > 0:
                time.sleep(wait)
            self.pool.submit(self.call, *make(rng))


def shopper(rng):
    """One ordinary request: the storefront's everyday mix."""
    client = rng.choice(CLIENTS)
    roll = rng.random()
    # Most views are of the popular (cached) products; one in ten of the long tail, a miss.
    hot = min(int(rng.paretovariate(1.2)), 500) if rng.random() < 0.9 else rng.randint(1001, 200000)
    if roll < 0.20:
        return "GET", f"/products?page_size={rng.choice([12, 12, 24])}", client
    if roll < 0.55:
        return "GET", f"/products/{hot}", client
    if roll < 0.67:
        return "GET", f"/search?q=product+{rng.choice('0123456789abcdef')}{rng.choice('0123456789abcdef')}", client
    if roll < 0.82:
        return "GET", f"/products/{rng.randint(6, 2000)}/reviews", client
    if roll < 0.85:
        return "GET", f"/products/{rng.randint(6, 2000)}/reviews?with=authors", client
    if roll < 0.95:
        return "POST", "/checkout", client, {"product": rng.randint(1, 200000)}
    return "POST", f"/wishlists/{rng.randint(1, 1000)}/share", client, {"to": "friend@example.com"}


def attack_streams(name):
    """(rate, request) streams of an attack phase."""
    return {
        "page-size-abuse": [(1.5, lambda r: ("GET", "/products?page_size=300", r.choice(CLIENTS[:3])))],
        "n-plus-one-rare-endpoint": [
            (1.0, lambda r: ("GET", f"/products/{r.randint(1, 5)}/reviews?with=authors", r.choice(CLIENTS[:3])))
        ],
        "cache-key-busting": [(15.0, lambda r: ("GET", f"/products/{r.randint(1000, 200000)}", r.choice(CLIENTS[:5])))],
        "retry-storm": [],
        # A leading wildcard and letters no name has: every row is read, nothing found. Four a
        # second: at two, a 5 s window held ten scans of 25 to 35 ms on CI's machine, and what
        # they added less the three heaviest fell under the window's 250 ms of excess.
        "scanning-search": [(4.0, lambda r: ("GET", f"/search?q=%25zq{r.randint(0, 99)}", CLIENTS[7]))],
        "rare-class-surge": [
            (
                20.0,
                lambda r: ("POST", f"/wishlists/{r.randint(1, 1000)}/share", r.choice(SURGE_CLIENTS), {"to": "x@example.com"}),
            )
        ],
    }[name]


def screenshot(console, path):
    """The console as a headless Chromium renders it, saved to `path` (PNG); skipped without
    Chromium. It polls the engine's API, so the page is given a few seconds of its own time."""
    chromium = shutil.which("chromium")
    if chromium is None:
        print("driver: no chromium, no screenshot of the console (apt-get install chromium)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", "--window-size=1400,900", "--virtual-time-budget=8000",
                   f"--user-data-dir={profile}", f"--screenshot={path}", console]
        try:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True)
            print(f"driver: {datetime.now():%H:%M:%S} the console, saved to {path}", file=sys.stderr)
        except (subprocess.SubprocessError, OSError) as error:
            print(f"driver: no screenshot of the console: {error}", file=sys.stderr)


def run(args):
    timings = TIMINGS[args.mode]
    driver = Driver(args.web, args.inventory)
    rate = timings["rate"]
    phases = []
    start = time.time()
    clock = start + timings["warm_up"]
    phases.append({"name": "warm-up", "kind": "calm", "start": start, "end": clock, "attack": False})
    for name, kind, detect_as in ATTACKS:
        phases.append({"name": name, "kind": kind, "start": clock, "end": clock + timings["phase"], "attack": True,
                       "detect_as": detect_as})
        clock += timings["phase"]
        phases.append({"name": "calm", "kind": "calm", "start": clock, "end": clock + timings["calm"], "attack": False})
        clock += timings["calm"]
    for name, kind in LEGITIMATE:
        phases.append({"name": name, "kind": kind, "start": clock, "end": clock + timings["phase"], "attack": False})
        clock += timings["phase"]
        phases.append({"name": "calm", "kind": "calm", "start": clock, "end": clock + timings["calm"], "attack": False})
        clock += timings["calm"]
    end = clock
    print(f"driver: {args.mode} run, {len(phases)} phases, {round(end - start)} s; ordinary traffic {rate}/s",
          file=sys.stderr)
    threads = [threading.Thread(target=driver.stream, args=(rate, shopper, end), daemon=True)]
    for phase in phases:
        streams = attack_streams(phase["name"]) if phase["attack"] else []
        if phase["kind"] == "flash_crowd":
            streams = [(rate * timings["crowd"], shopper)]
        for stream_rate, make in streams:
            threads.append(threading.Thread(target=lambda p=phase, s=stream_rate, m=make: (
                time.sleep(max(0.0, p["start"] - time.time())), driver.stream(s, m, p["end"])), daemon=True))
    for thread in threads:
        thread.start()
    for phase in phases:
        time.sleep(max(0.0, phase["start"] - time.time()))
        print(f"driver: {datetime.now():%H:%M:%S} {phase['name']} ({round(phase['end'] - phase['start'])} s)",
              file=sys.stderr)
        if phase["name"] == "retry-storm":
            requests.post(f"{args.inventory}/chaos", json={"failing": True}, timeout=10)
        time.sleep(max(0.0, phase["end"] - time.time()))
        if phase["name"] == "retry-storm":
            requests.post(f"{args.inventory}/chaos", json={"failing": False}, timeout=10)
    for thread in threads:
        thread.join()
    driver.pool.shutdown(wait=True)
    with open(args.truth, "w") as out:
        json.dump({"phases": phases, "sent": next(driver.sent), "failed": next(driver.failed)}, out, indent=1)
    # Traces complete after 5 s of quiet, windows close after theirs: wait for the last alerts.
    # Then the console, every attack's alerts in its feed (not during the crowd: a browser
    # starting is a load of its own on a small machine).
    time.sleep(timings["grace"])
    if args.screenshot:
        screenshot(f"{args.admin}/", args.screenshot)
    if args.alert_topic:
        copy_alert_topic(args.kafka, args.alert_topic, args.alerts)
    status = score(phases, read_alerts(args.alerts), timings["grace"], start, end)
    report_pipeline(args.admin)
    return status


def copy_alert_topic(bootstrap, topic, path):
    """The alerts of the engine's Kafka alert topic, as an SRE's dashboard reads them, copied to
    `path` (one JSON object a line)."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"stack-score-{topic}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    ended, deadline = set(), time.time() + 60
    with open(path, "w") as out:
        while len(ended) < len(partitions) and time.time() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
                    continue
                raise KafkaException(message.error())
            out.write(message.value().decode() + "\n")
    consumer.close()


# What the engine made of the collector's output: its /metrics counters, in this order.
PIPELINE = ["spans_received_total", "kafka_messages_total", "kafka_malformed_messages_total",
            "traces_completed_total", "late_spans_total", "traces_without_root_total",
            "traces_split_across_partitions_total", "spans_service_filled_total",
            "spans_service_unknown_total", "consumer_traces_tied_total"]


def engine_metrics(admin):
    """The engine's unlabelled /metrics values, by name (`stormwatch_...`)."""
    text = requests.get(f"{admin}/metrics", timeout=10).text
    return {name: float(value) for name, value in re.findall(r"^(stormwatch_\w+) (\S+)$", text, re.M)}


def pipeline(values):
    """The PIPELINE figures of `values` (from `engine_metrics`), as one line."""
    return ", ".join(f"{name.removesuffix('_total')} {int(values.get('stormwatch_' + name, 0))}" for name in PIPELINE)


def report_pipeline(admin):
    """What the engine made of the collector's output, from its /metrics."""
    try:
        print("pipeline: " + pipeline(engine_metrics(admin)))
    except requests.RequestException as error:
        print(f"pipeline: /metrics unreadable: {error}")


def read_alerts(path):
    alerts = []
    try:
        with open(path) as lines:
            for line in lines:
                alert = json.loads(line)
                alert["at"] = datetime.fromisoformat(alert["detected_at"].replace("Z", "+00:00")).timestamp()
                alerts.append(alert)
    except FileNotFoundError:
        pass
    return alerts


def score(phases, alerts, grace, start, end):
    loud = [a for a in alerts if a["severity"] in ("warning", "critical")]
    explained = set()
    ok = True
    print(f"\n{'phase':<26}{'kind':<16}{'result':<11}{'first alert':<26}{'ttd':>7}  alerts")
    for phase in phases:
        if phase["kind"] == "calm":
            continue
        during = [a for a in loud if phase["start"] <= a["at"] <= phase["end"] + grace]
        if phase["attack"]:
            hits = [a for a in during if a["kind"] in phase["detect_as"]]
            explained.update(a["id"] for a in hits)
            if hits:
                first = min(hits, key=lambda a: a["at"])
                print(f"{phase['name']:<26}{phase['kind']:<16}{'detected':<11}{first['kind']:<26}"
                      f"{first['at'] - phase['start']:>6.1f}s  {len(hits)}")
            else:
                ok = False
                print(f"{phase['name']:<26}{phase['kind']:<16}{'MISSED':<11}{'-':<26}{'-':>7}  0")
        else:
            # A throttled summary of an attack's incident is not this phase's.
            attacks = {a["fingerprint"] for a in loud if a["id"] in explained}
            during = [a for a in during if a["fingerprint"] not in attacks]
            result = "quiet" if not during else "ALERTED"
            ok = ok and not during
            print(f"{phase['name']:<26}{phase['kind']:<16}{result:<11}{(during[0]['kind'] if during else '-'):<26}"
                  f"{'-':>7}  {len(during)}")
    # A throttled summary ("Repeated N more times") is its incident's: same fingerprint.
    incidents = {a["fingerprint"] for a in loud if a["id"] in explained}
    false = [a for a in loud if a["id"] not in explained and a["fingerprint"] not in incidents]
    hours = max(end - start - sum(p["end"] - p["start"] for p in phases if p["attack"]), 1.0) / 3600
    print(f"\nfalse alerts (explained by no attack): {len(false)} warning+, {len(false) / hours:.1f} per hour of "
          f"normal traffic; {len(alerts)} alerts in all")
    for alert in false:
        print(f"  false: {alert['kind']} {alert['severity']}: {alert['explanation'][:200]}")
    ok = ok and not false
    print(f"result: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(TIMINGS), default="full")
    parser.add_argument("--web", required=True)
    parser.add_argument("--inventory", required=True)
    parser.add_argument("--admin", required=True)
    parser.add_argument("--alerts", required=True)
    parser.add_argument("--truth", required=True)
    parser.add_argument("--screenshot", help="save the console at the end of the run to this PNG (needs chromium)")
    parser.add_argument("--alert-topic", help="read the alerts from this Kafka topic (copied to --alerts)")
    parser.add_argument("--kafka", help="the Kafka bootstrap servers of --alert-topic")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()

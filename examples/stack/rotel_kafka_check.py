"""rotel's Kafka output, read by `serve --kafka-input`: what the stack's Kafka mode found, checked
on the real collector in a minute.

rotel (0.0.1a15) receives a scenario's traffic from `stormwatch loadgen --send` (10,000 spans a
second in export requests of 400) and exports it as protobuf to a Kafka topic of three
partitions in batches of 1,000 spans (so it cuts export requests to fill them); one engine
reads the topic. The check passes when every span sent reached the
engine, no message was malformed, traces came split across partitions and were counted, the
spans rotel sent without their resource were counted and given their service back, and the
engine's log said both with their remedies.

    rotel_kafka_check.py --engine BIN --rotel BIN --kafka HOST:PORT --scenario FILE

Run by scripts/test.sh after the stack's short run, with the stack's installs (.venv, .rotel)."""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from confluent_kafka.admin import AdminClient, NewTopic

from driver import engine_metrics, pipeline


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, name, log):
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"rotel-kafka: {name} did not listen on {port}; its log:\n{open(log).read()[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--rotel", required=True)
    parser.add_argument("--kafka", required=True)
    parser.add_argument("--scenario", required=True)
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="stormwatch-rotel-kafka.")
    run = f"{int(time.time())}-{os.getpid()}"
    topic = f"rotel-spans-{run}"
    admin_client = AdminClient({"bootstrap.servers": args.kafka})
    for future in admin_client.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)]).values():
        future.result(30)
    admin, otlp = free_port(), free_port()
    admin_url = f"http://127.0.0.1:{admin}"
    with open(f"{state}/engine.toml", "w") as config:
        config.write(f"""[output]
stdout = false
alerts_file = "{state}/alerts.jsonl"

[baseline]
models_dir = "{state}/models"

[kafka]
brokers = "{args.kafka}"
alert_topic = "rotel-alerts-{run}"
input_topic = "{topic}"
input_encoding = "otlp_proto"
group_id = "rotel-check-{run}"
""")
    processes, failures = [], ["did not finish"]
    try:
        engine_log = f"{state}/engine.log"
        processes.append(subprocess.Popen(
            [args.engine, "serve", "--config", f"{state}/engine.toml", "--kafka-input", "--admin", f"127.0.0.1:{admin}",
             "--otlp-grpc", f"127.0.0.1:{free_port()}", "--otlp-http", f"127.0.0.1:{free_port()}"],
            stdout=open(engine_log, "w"), stderr=subprocess.STDOUT))
        wait_port(admin, "the engine", engine_log)
        rotel_log = f"{state}/rotel.log"
        # 1,000-span batches of 400-span export requests: rotel cuts one request in two to fill
        # most batches. (A request larger than a batch is dropped: "Too many batch items split".)
        processes.append(subprocess.Popen(
            [args.rotel, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{otlp}", "--otlp-http-endpoint",
             f"127.0.0.1:{free_port()}", "--exporter", "kafka", "--kafka-exporter-brokers", args.kafka,
             "--kafka-exporter-traces-topic", topic, "--kafka-exporter-format", "protobuf",
             "--traces-batch-max-size", "2000"],
            stdout=open(rotel_log, "w"), stderr=subprocess.STDOUT))
        wait_port(otlp, "rotel", rotel_log)
        sent = subprocess.run(
            [args.engine, "loadgen", args.scenario, "--send", f"grpc://127.0.0.1:{otlp}", "--rate", "10000",
             "--batch-spans", "512"],
            check=True, capture_output=True, text=True).stderr
        spans = int(re.search(r"loadgen: sent (\d+) spans", sent).group(1))
        print(f"rotel-kafka: sent {spans} spans through rotel", file=sys.stderr)

        deadline = time.time() + 300
        while True:
            seen = engine_metrics(admin_url)
            settled = seen.get("stormwatch_spans_received_total", 0) >= spans \
                and seen.get("stormwatch_in_flight_traces", 1) == 0
            if settled or time.time() > deadline:
                break
            time.sleep(1)
        time.sleep(1)  # the log's once-a-minute lines follow /metrics within 200 ms
        seen, log = engine_metrics(admin_url), open(engine_log).read()
        figure = lambda name: int(seen.get(f"stormwatch_{name}", 0))
        print("rotel-kafka: " + pipeline(seen))
        failures = []
        if figure("spans_received_total") != spans:
            failures.append(f"the engine received {figure('spans_received_total')} of the {spans} spans sent")
        if figure("kafka_malformed_messages_total"):
            failures.append("malformed messages")
        if not figure("traces_split_across_partitions_total") or "arrived on more than one partition" not in log:
            failures.append("no trace split across partitions counted and told")
        lost = figure("spans_service_filled_total") + figure("spans_service_unknown_total")
        if not figure("spans_service_filled_total") or "whose resource named no service" not in log:
            failures.append("no span without a service counted, given its service and told")
        elif figure("spans_service_unknown_total") * 100 > lost:
            failures.append(f"{figure('spans_service_unknown_total')} of {lost} spans without a service left unknown")
        for failure in failures:
            print(f"rotel-kafka: FAIL: {failure} (logs in {state})")
        print(f"rotel-kafka: {'FAIL' if failures else 'PASS'}")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
    if failures:
        return 1
    shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""mailer: sends shared wishlists (a Kafka consumer, psycopg): each message from catalog is
recorded, and each of its items' names read for the mail, one by one (an everyday N+1 over a
handful of items)."""

import json
import os
import signal
import threading

import psycopg_pool

import telemetry

telemetry.instrument(None, "mailer")
pool = psycopg_pool.ConnectionPool(telemetry.database_url(), min_size=1, max_size=2, open=True)
consumer = telemetry.kafka_consumer("stack-mailer-" + telemetry.shares_topic())
running = True


def stop(*_):
    global running
    running = False


def main():
    signal.signal(signal.SIGTERM, stop)
    consumer.subscribe([telemetry.shares_topic()])
    print("mailer: consuming", telemetry.shares_topic(), flush=True)
    while running:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        share = json.loads(message.value())
        with pool.connection() as db:
            db.execute(
                "INSERT INTO shares (wishlist_id, recipient) VALUES (%s, %s)", (share["wishlist_id"], share["recipient"])
            )
            for item in share["items"]:
                db.execute("SELECT name FROM products WHERE id = %s", (item,)).fetchone()
    # Leave the group, but never hold the stack's shutdown on it: the broker may be gone
    # already, and then librdkafka's close waits.
    closer = threading.Thread(target=consumer.close, daemon=True)
    closer.start()
    closer.join(5)
    os._exit(0)


if __name__ == "__main__":
    main()

"""catalog: products, their cached pages, search and shared wishlists (Flask, psycopg, redis;
a share is sent to the mailer through Kafka)."""

import json
import os

import psycopg
import psycopg_pool
import redis
from flask import Flask, jsonify, request
from opentelemetry.instrumentation.utils import suppress_instrumentation

import telemetry

app = Flask("catalog")
telemetry.instrument(app, "catalog")
pool = psycopg_pool.ConnectionPool(telemetry.database_url(), min_size=2, max_size=8, open=True)
cache = redis.Redis.from_url(os.environ["STACK_REDIS_URL"])
shares = telemetry.kafka_producer()
# A product page stays cached for an hour.
CACHE_SECONDS = 3600


def page(row):
    return json.dumps({"id": row[0], "name": row[1], "price_cents": row[2]})


def warm(count):
    """Caches the first `count` products' pages, as a shop that has been running has them
    (untraced: it is set-up, not traffic)."""
    with suppress_instrumentation(), psycopg.connect(telemetry.database_url()) as db:
        rows = db.execute("SELECT id, name, price_cents FROM products WHERE id <= %s", (count,)).fetchall()
    with suppress_instrumentation(), cache.pipeline() as pipe:
        for row in rows:
            pipe.set(f"product:{row[0]}", page(row), ex=CACHE_SECONDS)
        pipe.execute()


@app.get("/products")
def products():
    limit = min(int(request.args.get("limit", "12")), 1000)
    with pool.connection() as db:
        rows = db.execute("SELECT id, name, price_cents FROM products ORDER BY id LIMIT %s", (limit,)).fetchall()
    return jsonify([{"id": r[0], "name": r[1], "price_cents": r[2]} for r in rows])


@app.get("/products/<int:product_id>")
def product(product_id):
    key = f"product:{product_id}"
    cached = cache.get(key)
    if cached is not None:
        return app.response_class(cached, mimetype="application/json")
    with pool.connection() as db:
        row = db.execute("SELECT id, name, price_cents FROM products WHERE id = %s", (product_id,)).fetchone()
    if row is None:
        return jsonify({"error": "no such product"}), 404
    body = page(row)
    cache.set(key, body, ex=CACHE_SECONDS)
    return app.response_class(body, mimetype="application/json")


@app.get("/search")
def search():
    pattern = request.args.get("q", "") + "%"
    with pool.connection() as db:
        rows = db.execute("SELECT id, name FROM products WHERE name LIKE %s LIMIT 20", (pattern,)).fetchall()
    return jsonify([{"id": r[0], "name": r[1]} for r in rows])


@app.post("/wishlists/<int:wishlist_id>/share")
def share(wishlist_id):
    recipient = (request.get_json(silent=True) or {}).get("to", "friend@example.com")
    with pool.connection() as db:
        items = db.execute("SELECT product_id FROM wishlist_items WHERE wishlist_id = %s", (wishlist_id,)).fetchall()
    message = {"wishlist_id": wishlist_id, "recipient": recipient, "items": [row[0] for row in items]}
    shares.produce(telemetry.shares_topic(), key=str(wishlist_id), value=json.dumps(message))
    shares.poll(0)
    return jsonify({"shared": len(items)})


if __name__ == "__main__":
    warm(1000)
    app.run(host="127.0.0.1", port=int(os.environ["STACK_PORT"]), threaded=True)

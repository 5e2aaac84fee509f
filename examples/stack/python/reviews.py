"""reviews: a product's reviews, and (rarely asked for) each with its author (Flask, psycopg).

The detailed view looks each review's author up one by one: an everyday N+1, harmless for a
product with a few reviews."""

import os

import psycopg_pool
from flask import Flask, jsonify

import telemetry

app = Flask("reviews")
telemetry.instrument(app, "reviews")
pool = psycopg_pool.ConnectionPool(telemetry.database_url(), min_size=2, max_size=8, open=True)


@app.get("/reviews/<int:product_id>")
def reviews(product_id):
    with pool.connection() as db:
        rows = db.execute(
            "SELECT r.stars, r.body, a.name FROM reviews r JOIN authors a ON a.id = r.author_id WHERE r.product_id = %s",
            (product_id,),
        ).fetchall()
    return jsonify([{"stars": r[0], "body": r[1], "author": r[2]} for r in rows])


@app.get("/reviews/<int:product_id>/detailed")
def detailed(product_id):
    with pool.connection() as db:
        rows = db.execute("SELECT stars, body, author_id FROM reviews WHERE product_id = %s", (product_id,)).fetchall()
        out = []
        for stars, body, author_id in rows:
            author = db.execute("SELECT name FROM authors WHERE id = %s", (author_id,)).fetchone()
            out.append({"stars": stars, "body": body, "author": author[0] if author else None})
    return jsonify(out)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["STACK_PORT"]), threaded=True)

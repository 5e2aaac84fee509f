-- The storefront's data: 200,000 products (a search with a leading wildcard reads them all),
-- 5,000 authors, a few reviews per product and hundreds on the first five, stock per product,
-- and wishlists to share.
DROP TABLE IF EXISTS shares, wishlist_items, wishlists, reviews, authors, stock, products;

CREATE TABLE products (id integer PRIMARY KEY, name text NOT NULL, price_cents integer NOT NULL);
INSERT INTO products
  SELECT g, 'product ' || md5(g::text) || ' ' || (ARRAY['lamp','chair','desk','mug','rug','shelf'])[1 + g % 6], 500 + g % 9000
  FROM generate_series(1, 200000) g;
CREATE INDEX products_name_prefix ON products (name text_pattern_ops);

CREATE TABLE stock (product_id integer PRIMARY KEY, available integer NOT NULL);
INSERT INTO stock SELECT g, 50 + g % 100 FROM generate_series(1, 200000) g;

CREATE TABLE authors (id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO authors SELECT g, 'author ' || g FROM generate_series(1, 5000) g;

CREATE TABLE reviews (id serial PRIMARY KEY, product_id integer NOT NULL, author_id integer NOT NULL, stars integer NOT NULL, body text NOT NULL);
INSERT INTO reviews (product_id, author_id, stars, body)
  SELECT p, 1 + (p * 7 + r) % 5000, 1 + (p + r) % 5, 'review ' || r || ' of ' || p
  FROM generate_series(1, 2000) p, generate_series(1, 1 + p % 5) r;
INSERT INTO reviews (product_id, author_id, stars, body)
  SELECT p, 1 + (p * 13 + r) % 5000, 1 + r % 5, 'review ' || r || ' of ' || p
  FROM generate_series(1, 5) p, generate_series(1, 300) r;
CREATE INDEX reviews_product ON reviews (product_id);

CREATE TABLE wishlists (id integer PRIMARY KEY, owner text NOT NULL);
INSERT INTO wishlists SELECT g, 'user' || g FROM generate_series(1, 1000) g;
CREATE TABLE wishlist_items (wishlist_id integer NOT NULL, product_id integer NOT NULL);
INSERT INTO wishlist_items SELECT w, 1 + (w * 31 + i) % 200000 FROM generate_series(1, 1000) w, generate_series(1, 4) i;
CREATE INDEX wishlist_items_list ON wishlist_items (wishlist_id);
CREATE TABLE shares (id serial PRIMARY KEY, wishlist_id integer NOT NULL, recipient text NOT NULL);

ANALYZE;

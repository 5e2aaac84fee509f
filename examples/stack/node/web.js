// web: the storefront's entry (express). Pages call catalog, reviews and inventory over HTTP.
const express = require('express');

const CATALOG = process.env.STACK_CATALOG_URL;
const REVIEWS = process.env.STACK_REVIEWS_URL;
const INVENTORY = process.env.STACK_INVENTORY_URL;

const app = express();
app.use(express.json());

async function get(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {
    const error = new Error(`${url}: ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// A page of products with each one's stock: one call per product shown (page_size of them).
app.get('/products', async (req, res, next) => {
  try {
    const size = Math.min(parseInt(req.query.page_size || '12', 10) || 12, 1000);
    const products = await get(`${CATALOG}/products?limit=${size}`);
    for (const product of products) {
      product.stock = (await get(`${INVENTORY}/stock/${product.id}`)).available;
    }
    res.json(products);
  } catch (error) {
    next(error);
  }
});

app.get('/products/:id', async (req, res, next) => {
  try {
    res.json(await get(`${CATALOG}/products/${encodeURIComponent(req.params.id)}`));
  } catch (error) {
    next(error);
  }
});

app.get('/products/:id/reviews', async (req, res, next) => {
  try {
    const detailed = req.query.with === 'authors' ? '/detailed' : '';
    res.json(await get(`${REVIEWS}/reviews/${encodeURIComponent(req.params.id)}${detailed}`));
  } catch (error) {
    next(error);
  }
});

app.get('/search', async (req, res, next) => {
  try {
    res.json(await get(`${CATALOG}/search?q=${encodeURIComponent(req.query.q || '')}`));
  } catch (error) {
    next(error);
  }
});

// Checkout reserves stock, retrying a failed reservation up to four times at once: an everyday
// retry loop that a failing inventory turns into a storm.
app.post('/checkout', async (req, res, next) => {
  const product = req.body.product || 1;
  for (let attempt = 0; attempt < 5; attempt += 1) {
    try {
      const reserved = await get(`${INVENTORY}/reserve`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ product }),
      });
      return res.json(reserved);
    } catch (error) {
      if (attempt === 4) return next(error);
    }
  }
});

app.post('/wishlists/:id/share', async (req, res, next) => {
  try {
    res.json(
      await get(`${CATALOG}/wishlists/${encodeURIComponent(req.params.id)}/share`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(req.body || {}),
      }),
    );
  } catch (error) {
    next(error);
  }
});

app.use((error, req, res, _next) => res.status(error.status === 404 ? 404 : 502).json({ error: error.message }));

app.listen(parseInt(process.env.STACK_PORT, 10), '127.0.0.1');

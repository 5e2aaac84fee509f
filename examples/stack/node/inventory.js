// inventory: stock levels and reservations (express, node-postgres). POST /chaos {"failing":
// true} makes reservations fail, as a dependency that broke would.
const express = require('express');
const { Pool } = require('pg');

const pool = new Pool({ connectionString: process.env.STACK_DATABASE_URL, max: 8 });
const app = express();
app.use(express.json());
let failing = false;

app.get('/stock/:id', async (req, res, next) => {
  try {
    const result = await pool.query('SELECT available FROM stock WHERE product_id = $1', [req.params.id]);
    res.json({ available: result.rows.length ? result.rows[0].available : 0 });
  } catch (error) {
    next(error);
  }
});

app.post('/reserve', async (req, res, next) => {
  if (failing) return res.status(503).json({ error: 'inventory unavailable' });
  try {
    const result = await pool.query(
      'UPDATE stock SET available = available - 1 WHERE product_id = $1 AND available > 0 RETURNING available',
      [req.body.product || 1],
    );
    res.json({ reserved: result.rowCount === 1 });
  } catch (error) {
    next(error);
  }
});

app.post('/chaos', (req, res) => {
  failing = Boolean(req.body.failing);
  res.json({ failing });
});

app.listen(parseInt(process.env.STACK_PORT, 10), '127.0.0.1');

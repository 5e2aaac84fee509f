//! Contention is not amplification: a crowd of buyers makes one hot row's `UPDATE`s wait many
//! times longer on locks and commit flushes, while the database's many fast reads keep its
//! overall pace. Seen on the real stack (issue 20): window-level `cost_amplification` on the
//! `UPDATE` under a legitimate flash crowd.

use super::*;

const UPDATE: &str = "UPDATE stock SET available = available - ? WHERE product_id = ? AND available > ?";
const READ: &str = "SELECT id, name, price_cents FROM products WHERE id = ?";

/// Browsing: gateway `GET /products` -> catalog, five reads of about 0.5 ms; `read_micros`
/// replaces the usual time of each.
fn browse(seed: u64, at: u64, read_micros: Option<u64>) -> Vec<Span> {
    let mut t = TraceBuilder::new(seed, at);
    let root = t.server("gateway", "GET /products", None);
    let call = t.client("gateway", "GET", root);
    let items = t.server("catalog", "GET /items", Some(call));
    for i in 0..5 {
        t.db("catalog", "postgresql", READ, items);
        t.duration_last(read_micros.unwrap_or(400 + (seed * 7 + i * 13) % 200) * 1_000);
    }
    t.build()
}

/// Buying: gateway `POST /checkout` -> inventory, one `UPDATE` taking `update_micros`.
fn buy(seed: u64, at: u64, update_micros: u64) -> Vec<Span> {
    let mut t = TraceBuilder::new(seed, at);
    let root = t.server("gateway", "POST /checkout", None);
    let call = t.client("gateway", "POST", root);
    let reserve = t.server("inventory", "POST /reserve", Some(call));
    t.db("inventory", "postgresql", UPDATE, reserve);
    t.duration_last(update_micros * 1_000);
    t.build()
}

/// `seconds` of traffic from `*at`: `load` times the usual 20 browses and 2 checkouts a
/// second, each update taking `update` microseconds (with jitter); one browse in twenty reads
/// for `scan` microseconds when given.
fn traffic(engine: &mut Engine, at: &mut u64, seconds: u64, load: u64, update: u64, scan: Option<u64>) -> Vec<Alert> {
    let mut out = Vec::new();
    let per_second = 22 * load;
    for _ in 0..seconds {
        for i in 0..per_second {
            let seed = *at / 1_000_000;
            let jitter = seed * 31 % (update / 3 + 1);
            let spans = match i % 11 {
                0 => buy(seed, *at, update + jitter),
                1 if i % 22 == 1 => browse(seed, *at, scan),
                _ => browse(seed, *at, None),
            };
            engine.push(spans, &mut out);
            *at += SEC / per_second;
        }
    }
    out
}

fn warnings_of(alerts: &[Alert], kind: AlertKind) -> Vec<&Alert> {
    alerts.iter().filter(|a| a.kind == kind && a.severity >= Severity::Warning).collect()
}

#[test]
fn a_crowd_of_buyers_waiting_on_a_hot_row_is_contention_and_a_scan_at_the_usual_load_is_not() {
    let mut engine = engine();
    let mut at = T0;
    // Twelve minutes of the usual shop, each update about 1.9 ms.
    let learning = traffic(&mut engine, &mut at, 720, 1, 1_900, None);
    assert!(warnings_of(&learning, AlertKind::CostAmplification).is_empty(), "{learning:#?}");

    // A flash crowd: three times the shoppers, and as it builds up over half a minute the
    // updates wait longer and longer, up to 18 times as long; every read is as fast as ever.
    let mut crowd = Vec::new();
    for second in 1..=30 {
        crowd.extend(traffic(&mut engine, &mut at, 1, 3, 1_900 + (34_000 - 1_900) * second / 30, None));
    }
    crowd.extend(traffic(&mut engine, &mut at, 90, 3, 34_000, None));
    let crowd_cost = warnings_of(&crowd, AlertKind::CostAmplification);
    assert!(crowd_cost.is_empty(), "contention is not a cost incident: {crowd_cost:#?}");
    assert!(
        engine.store().slowdown(stormwatch_baseline::PaceLane {
            callee: Sym::new("postgresql"),
            kind: stormwatch_model::NodeKind::Database,
            writes: true,
        }) > 8.0,
        "the database's writes are slower than usual"
    );

    // Calm again, then one browse in twenty scans (each read 30 times slower) at the usual
    // load: the reads' pace was not moved by the writes, and this is time amplification.
    traffic(&mut engine, &mut at, 120, 1, 1_900, None);
    let scan = traffic(&mut engine, &mut at, 60, 1, 1_900, Some(15_000));
    let scan_cost = warnings_of(&scan, AlertKind::CostAmplification);
    assert!(
        scan_cost.iter().any(|a| a.edge.as_ref().is_some_and(|e| e.to.operation == READ)),
        "slower reads at the usual load are cost amplification: {scan:#?}"
    );
}

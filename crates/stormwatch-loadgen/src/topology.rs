//! Generated topologies: hundreds of services whose call graphs follow the shapes published
//! for Alibaba's 2021 microservice traces (Luo et al., SoCC '21): heavy-tailed fan-out, call
//! graphs up to about ten tiers deep, a few hot services that most requests reach, and a mix
//! of RPC, message-queue, database and cache calls, with occasional loops.
//!
//! Services are `s000`, `s001`, ...; the first `entries` are entry services (operations
//! `GET /api/{k}`), the rest sit in tiers 1..`max_depth` and offer `POST /rpc{k}`. A call
//! goes only to deeper tiers, so graphs are acyclic. Callees are chosen by Zipf popularity
//! (low numbers are hot): `s{entries}` … are the hottest services.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::distribution::{Count, Rng};
use crate::scenario::{Call, Entry, Operation};

/// The `[generated]` section of a scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedTopology {
    /// Services in all, entry services included.
    pub services: usize,
    /// Entry services (tier 0), each with `operations` entry operations.
    pub entries: usize,
    /// Operations per entry service.
    #[serde(default = "default_operations")]
    pub operations: usize,
    /// Tiers below the entries; call chains are at most this deep.
    #[serde(default = "default_depth")]
    pub max_depth: usize,
    /// Distinct RPC callees per operation at tier 0; thins out linearly with depth.
    #[serde(default = "default_rpc")]
    pub rpc_callees: Count,
    /// Database / cache / queue calls per operation.
    #[serde(default = "default_leaf")]
    pub leaf_calls: Count,
    /// Zipf exponent of callee popularity: higher means hotter hot services.
    #[serde(default = "default_popularity")]
    pub popularity: f64,
    /// Share of calls made in a loop (`uniform(2,6)` times per execution).
    #[serde(default = "default_loops")]
    pub loops: f64,
    /// Share of calls whose count is heavy tailed (`pareto(1,1.8)`).
    #[serde(default = "default_heavy")]
    pub heavy_tailed: f64,
    /// Probability that an operation fails.
    #[serde(default)]
    pub error_rate: f64,
}

fn default_operations() -> usize {
    2
}
fn default_depth() -> usize {
    8
}
fn default_rpc() -> Count {
    Count::Pareto(0.9, 1.6)
}
fn default_leaf() -> Count {
    Count::Poisson(1.2)
}
fn default_popularity() -> f64 {
    1.1
}
fn default_loops() -> f64 {
    0.08
}
fn default_heavy() -> f64 {
    0.02
}

pub(crate) fn service_name(index: usize) -> String {
    format!("s{index:03}")
}

/// The generated system's layers: entry services in tier 0, the others in tiers 1..=depth
/// (evenly by index, hot ones spread over all tiers), with Zipf popularity.
struct Tiers {
    entries: usize,
    inner: usize,
    depth: usize,
    popularity: Vec<f64>,
}

impl Tiers {
    fn tier_of(&self, index: usize) -> usize {
        if index < self.entries {
            0
        } else {
            1 + (index - self.entries) * self.depth / self.inner
        }
    }
}

const DATABASES: [&str; 4] = ["postgresql:orders", "mysql:catalog", "mongodb:profiles", "postgresql:ledger"];
const CACHES: [&str; 2] = ["redis", "memcached"];
const QUEUES: [&str; 3] = ["kafka:events", "rocketmq:orders", "kafka:audit"];
const TABLES: [&str; 8] = ["orders", "items", "users", "sessions", "prices", "stock", "carts", "events"];

/// Expands the section into entries and services.
pub(crate) fn generate(
    spec: &GeneratedTopology,
    seed: u64,
) -> (Vec<Entry>, BTreeMap<String, BTreeMap<String, Operation>>) {
    let mut rng = Rng::new(seed ^ 0x7090_1091_0000_0001);
    let entries_count = spec.entries.clamp(1, spec.services.max(1));
    let tiers = Tiers {
        entries: entries_count,
        inner: spec.services.saturating_sub(entries_count).max(1),
        depth: spec.max_depth.max(1),
        popularity: (0..spec.services)
            .map(|i| 1.0 / ((i.saturating_sub(entries_count) + 1) as f64).powf(spec.popularity))
            .collect(),
    };
    let mut services: BTreeMap<String, BTreeMap<String, Operation>> = BTreeMap::new();
    let mut entries = Vec::new();
    for index in 0..spec.services {
        let tier = tiers.tier_of(index);
        let name = service_name(index);
        let operations = if index < entries_count {
            spec.operations.max(1)
        } else {
            1 + rng.between(0, spec.operations as u64 - 1) as usize
        };
        let mut ops = BTreeMap::new();
        for k in 0..operations {
            let op_name = if tier == 0 { format!("GET /api/{k}") } else { format!("POST /rpc{k}") };
            let mut calls = rpc_calls(spec, &tiers, tier, &mut rng);
            for _ in 0..spec.leaf_calls.sample(&mut rng) {
                let call = leaf_call(&name, k, &mut rng);
                calls.push(Call { count: call_count(spec, &mut rng), ..call });
            }
            let operation = Operation {
                calls,
                error_rate: spec.error_rate,
                duration_ms: 0.5 + rng.unit() * 3.0,
                response_bytes: Some(Count::Uniform(200, 8_000)),
                request_bytes: None,
            };
            ops.insert(op_name.clone(), operation);
            if tier == 0 {
                entries.push(Entry {
                    service: name.clone(),
                    operation: op_name,
                    weight: popularity_of_entry(index, k),
                    query: vec![],
                });
            }
        }
        services.insert(name, ops);
    }
    point_at_existing_operations(&mut services);
    (entries, services)
}

/// RPC callees of an operation in `tier`, in the next tiers, thinning with depth.
fn rpc_calls(spec: &GeneratedTopology, tiers: &Tiers, tier: usize, rng: &mut Rng) -> Vec<Call> {
    let mut calls = Vec::new();
    if tier >= tiers.depth {
        return calls;
    }
    let wanted = rpc_count(&spec.rpc_callees, rng, tier, tiers.depth);
    let candidates: Vec<usize> =
        (tiers.entries..spec.services).filter(|c| (tier + 1..=tier + 3).contains(&tiers.tier_of(*c))).collect();
    if candidates.is_empty() {
        return calls;
    }
    let weights: Vec<f64> = candidates.iter().map(|c| tiers.popularity[*c]).collect();
    let mut chosen: Vec<usize> = Vec::new();
    for _ in 0..wanted {
        let callee = candidates[rng.weighted(&weights)];
        if !chosen.contains(&callee) {
            chosen.push(callee);
        }
    }
    for callee in chosen {
        let callee_ops = 1 + (callee as u64 * 7 + 3) % spec.operations.max(1) as u64;
        let callee_op = rng.between(0, callee_ops - 1);
        calls.push(Call {
            count: call_count(spec, rng),
            ..call_to(format!("{} POST /rpc{callee_op}", service_name(callee)))
        });
    }
    calls
}

/// A call to a database (half), a cache (a third) or a queue, from operation `k` of `name`.
fn leaf_call(name: &str, k: usize, rng: &mut Rng) -> Call {
    let pick = rng.unit();
    let table = TABLES[rng.between(0, TABLES.len() as u64 - 1) as usize];
    if pick < 0.5 {
        let db = DATABASES[rng.between(0, DATABASES.len() as u64 - 1) as usize];
        Call {
            db: Some(db.into()),
            statement: Some(format!("SELECT * FROM {table} WHERE id = ? /* {name} */")),
            ..empty_call()
        }
    } else if pick < 0.85 {
        let cache = CACHES[rng.between(0, 1) as usize];
        Call {
            name: Some(format!("{name}-{k}-{table}-cache")),
            cache: Some(cache.into()),
            miss_ratio: 0.1,
            ..empty_call()
        }
    } else {
        Call { queue: Some(QUEUES[rng.between(0, QUEUES.len() as u64 - 1) as usize].into()), ..empty_call() }
    }
}

/// Callees may have fewer operations than a caller picked: those calls go to rpc0.
fn point_at_existing_operations(services: &mut BTreeMap<String, BTreeMap<String, Operation>>) {
    let existing: BTreeMap<String, Vec<String>> =
        services.iter().map(|(s, ops)| (s.clone(), ops.keys().cloned().collect())).collect();
    for ops in services.values_mut() {
        for operation in ops.values_mut() {
            for call in &mut operation.calls {
                if let Some(target) = &mut call.service {
                    let (callee, op) =
                        target.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default();
                    if !existing.get(&callee).is_some_and(|ops| ops.contains(&op)) {
                        *target = format!("{callee} POST /rpc0");
                    }
                }
            }
        }
    }
}

fn rpc_count(distribution: &Count, rng: &mut Rng, tier: usize, depth: usize) -> u64 {
    let thinning = 1.0 - tier as f64 / depth as f64;
    let sample = distribution.sample(rng).min(12) as f64;
    (sample * thinning + rng.unit()).floor() as u64
}

fn call_count(spec: &GeneratedTopology, rng: &mut Rng) -> Count {
    let pick = rng.unit();
    if pick < spec.heavy_tailed {
        Count::Pareto(1.0, 1.8)
    } else if pick < spec.heavy_tailed + spec.loops {
        Count::Uniform(2, 6)
    } else {
        Count::Fixed(1)
    }
}

/// Entry traffic is skewed too: a few entry operations carry most requests.
fn popularity_of_entry(index: usize, operation: usize) -> f64 {
    1.0 / ((index * 2 + operation + 1) as f64).powf(0.8)
}

fn empty_call() -> Call {
    Call {
        name: None,
        service: None,
        db: None,
        statement: None,
        rows: None,
        cache: None,
        miss_ratio: 0.0,
        on_miss: Vec::new(),
        queue: None,
        consumer: None,
        delivery: crate::scenario::Delivery::default(),
        lag_ms: Count::default_lag(),
        count: Count::Fixed(1),
        retries: 0,
    }
}

fn call_to(target: String) -> Call {
    Call { service: Some(target), ..empty_call() }
}

//! `stormwatch baseline`: what the engine learned, from a running engine's admin API or offline
//! from snapshot files, as tables (or JSON with `--json`); and the engine thread's answers to
//! the admin API's `/api/baselines`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use stormwatch_baseline::inspect::{self, BaselineRow, Query};
use stormwatch_baseline::{decode_snapshot, BaselineStore, SNAPSHOT_FILE};
use stormwatch_detect::Engine;
use stormwatch_io::admin::AdminQuery;

use stormwatch_detect::tuning::Tuning;
use stormwatch_model::AlertKind;

use crate::tuning::{Change, TuningWatch};

use crate::{BaselineArgs, BaselineCommand, BaselineFilter, BaselineSource, TuningTarget};

/// Parameters `/api/baselines` (and `baseline list`) take.
const PARAMS: [&str; 6] = ["service", "to_kind", "table", "match", "sort", "limit"];

fn query_of(params: &BTreeMap<String, String>) -> Result<Query, String> {
    if let Some(unknown) = params.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(format!("unknown parameter {unknown:?}: use {}", PARAMS.join(", ")));
    }
    let limit = match params.get("limit") {
        Some(text) => Some(text.parse().map_err(|_| format!("limit={text:?} is not a number of rows"))?),
        None => None,
    };
    Ok(Query {
        service: params.get("service").cloned(),
        to_kind: params.get("to_kind").cloned(),
        table: params.get("table").cloned(),
        matching: params.get("match").cloned(),
        sort: params.get("sort").cloned(),
        limit,
    })
}

/// Most rows one `/api/baselines` answer holds, and how many without `limit`.
const API_MAX_ROWS: usize = 10_000;
const API_DEFAULT_ROWS: usize = 1_000;

/// The rows of `store` that `params` select (at most `max_rows`: [`API_MAX_ROWS`] for the
/// API), as the API's JSON body, or a 400 naming the parameter.
fn list(
    store: &BaselineStore,
    recent: &[BTreeMap<String, f64>],
    params: &BTreeMap<String, String>,
    max_rows: usize,
) -> (u16, String) {
    let mut params = params.clone();
    match params.get("limit").map(|text| text.parse::<usize>()) {
        Some(Ok(limit)) if (1..=max_rows).contains(&limit) => {}
        Some(_) => {
            let message = format!(
                "limit must be a number of rows from 1 to {max_rows} (total says how many match; narrow with \
                 service, to_kind, table or match)"
            );
            return (400, serde_json::json!({ "error": message }).to_string());
        }
        None => {
            params.insert("limit".into(), API_DEFAULT_ROWS.to_string());
        }
    }
    let mut rows = inspect::rows(store);
    inspect::annotate(&mut rows, recent);
    let total = rows.len();
    match query_of(&params).and_then(|query| query.apply(rows)) {
        Ok(rows) => (200, serde_json::json!({ "total": total, "rows": rows }).to_string()),
        Err(error) => (400, serde_json::json!({ "error": error }).to_string()),
    }
}

/// What each detector compares, in a sentence.
fn rule_of(kind: &str) -> &'static str {
    match kind {
        "n_plus_one" => {
            "calls of one statement under one parent span, against that edge's learned calls per parent: \
            above p99 x detect.ratio (and the distribution's tail), by at least detect.min_excess calls"
        }
        "fanout_amplification" => {
            "calls to one service under one parent span, against that edge's learned calls per \
            parent: above p99 x detect.ratio, by at least detect.min_excess calls"
        }
        "request_amplification" => {
            "work one request from this entry point caused (calls on the edge, database calls, \
            spans or services), against what requests of that entry point learned"
        }
        "aggregate_amplification" => {
            "calls on the edge per entry request in one window, against the edge's window \
            baseline (and its level at this hour of day): above p99 x detect.ratio, broad (not a few heavy traces) \
            and beyond chance"
        }
        "retry_storm" => "the share of calls on the edge that were retries in one window, against its window baseline",
        "cache_bypass" => "database reads per cache lookup in one window (the miss ratio), against its window baseline",
        "correlated_storm" => {
            "the window's calls per entry request on every edge, projected off the learned normal \
            traffic patterns (PCA): a residual beyond the fitted threshold"
        }
        "new_edge" => "an edge no trace had used before, with enough calls to matter",
        _ => "unknown detector",
    }
}

/// Why an alert fired: the alert, the rule, the baselines of its edge and entry as they are
/// now, and the tuning that applies to it.
fn explanation(alert: &serde_json::Value, rows: &[BaselineRow], tuning: &Tuning) -> serde_json::Value {
    let node = |n: &serde_json::Value| {
        format!("{} `{}`", n["service"].as_str().unwrap_or(""), n["operation"].as_str().unwrap_or(""))
    };
    let edge =
        alert.get("edge").filter(|e| !e.is_null()).map(|e| format!("{} -> {}", node(&e["from"]), node(&e["to"])));
    // The entry as baselines name it: with its query shape (`service `operation?keys``).
    let entry = alert.get("entry").filter(|e| !e.is_null()).map(|e| {
        let keys: Vec<&str> =
            e["query_keys"].as_array().map_or(Vec::new(), |k| k.iter().filter_map(|k| k.as_str()).collect());
        match keys.is_empty() {
            true => node(e),
            false => format!(
                "{} `{}?{}`",
                e["service"].as_str().unwrap_or(""),
                e["operation"].as_str().unwrap_or(""),
                keys.join("&")
            ),
        }
    });
    let kind = alert["kind"].as_str().unwrap_or("");
    // A young entry's totals or a young edge's calls per parent were judged against a wider
    // baseline (or a request against the whole system's): `baseline.from` says which.
    let from = alert["baseline"]["from"].as_str();
    let judged_by = |r: &BaselineRow| {
        from.is_some_and(|from| match (r.table.split(':').next(), &r.entry, &r.edge) {
            (Some("route_per_request" | "service_per_request"), Some(scope), _) => {
                from == format!("every request to {scope}")
            }
            (Some("system_per_request"), None, _) => from == "every request of the system",
            (Some("pair_per_parent"), _, Some(pair)) => pair
                .split_once(" -> ")
                .is_some_and(|(caller, callee)| from == format!("every call from {caller} to {callee}")),
            (Some("kind_per_parent"), _, Some(scope)) => scope
                .split_once(" -> any ")
                .is_some_and(|(caller, kind)| from == format!("every call from {caller} to a {kind}")),
            _ => false,
        })
    };
    let baselines: Vec<&BaselineRow> = rows
        .iter()
        .filter(|r| {
            let on_edge = edge.is_some() && r.edge == edge && (r.entry.is_none() || r.entry == entry);
            let on_entry = edge.is_none() && r.edge.is_none() && entry.is_some() && r.entry == entry;
            on_edge || on_entry || judged_by(r)
        })
        .collect();
    let rules: Vec<String> = tuning
        .rules
        .iter()
        .filter(|r| r.edge.is_none() || r.edge == edge)
        .filter(|r| r.entry.is_none() || r.entry == entry)
        .filter(|r| r.kind.is_none_or(|k| k.as_str() == kind))
        .map(|r| format!("{r:?}"))
        .collect();
    let mode = AlertKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .and_then(|k| tuning.detectors.get(&k))
        .map_or("on".to_string(), |m| format!("{m:?}").to_lowercase());
    let frozen = edge.as_ref().is_some_and(|e| tuning.frozen_edges.contains(e));
    let unprecedented = alert["explanation"].as_str().is_some_and(|e| e.contains("never seen in the whole system"));
    let young = if alert["unit"] == "calls_per_parent" { "edge" } else { "entry" };
    let borrowed = from.map_or(String::new(), |from| match unprecedented {
        true => {
            format!(" of {from} (far beyond anything the whole system did, whatever the entry's own baseline allows)")
        }
        false => format!(
            " of {from} (the {young}'s own baseline was too young to judge; a wider one judges at half the sensitivity)"
        ),
    });
    let why = format!(
        "{kind}: observed {} {} against an expected {} and a threshold of {} (score {}), from a baseline of {} samples{borrowed}.",
        alert["observed"], alert["unit"].as_str().unwrap_or(""), alert["expected"], alert["threshold"], alert["score"],
        alert["baseline"]["samples"]
    );
    serde_json::json!({
        "why": why,
        "rule": rule_of(kind),
        "explanation": alert["explanation"],
        "edge": edge,
        "entry": entry,
        "exemplar_trace_ids": alert["exemplar_trace_ids"],
        "baselines_now": baselines,
        "tuning": { "detector_mode": mode, "edge_frozen": frozen, "overrides": rules },
        "alert": alert,
    })
}

/// Finds an alert by id or fingerprint (the newest with that fingerprint).
fn find<'a>(
    alerts: impl DoubleEndedIterator<Item = &'a serde_json::Value>,
    wanted: &str,
) -> Option<&'a serde_json::Value> {
    alerts.rev().find(|a| a["id"] == wanted || a["fingerprint"] == wanted)
}

/// Alerts an engine keeps for `/api/alerts` and `/api/explain`.
pub(crate) const RECENT_ALERTS: usize = 1000;

/// The admin token file in a models directory.
pub(crate) const TOKEN_FILE: &str = "admin.token";

/// `GET /api/graph?limit=N&focus=TEXT`: the last judged window's call graph at service level,
/// at most `limit` edges (default 200; the busiest half and the most anomalous half), each with
/// the recent alerts on it; with `focus`, only the edges of the nodes whose name contains it.
fn graph(
    engine: &Engine,
    params: &BTreeMap<String, String>,
    recent: &std::collections::VecDeque<serde_json::Value>,
) -> (u16, String) {
    let error = |message: String| (400, serde_json::json!({ "error": message }).to_string());
    if let Some(unknown) = params.keys().find(|k| !["limit", "focus"].contains(&k.as_str())) {
        return error(format!("unknown parameter {unknown:?}: /api/graph takes limit and focus"));
    }
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 200,
        Some(Ok(limit)) if (1..=10_000).contains(&limit) => limit,
        Some(_) => return error("limit must be a number from 1 to 10000".into()),
    };
    let mut graph = stormwatch_detect::graph::service_graph(
        &engine.edge_gauges(usize::MAX),
        limit,
        params.get("focus").map(String::as_str),
    );
    for edge in &mut graph.edges {
        edge.alerts = recent
            .iter()
            .filter(|a| {
                a["edge"]["from"]["service"] == edge.from.as_str()
                    && a["edge"]["to"]["service"] == edge.to.as_str()
                    && a["edge"]["to"]["kind"] == edge.to_kind.as_str()
            })
            .count();
    }
    let window_end = match engine.last_window_end() {
        0 => serde_json::Value::Null,
        end => stormwatch_model::rfc3339(end).into(),
    };
    let mut body = serde_json::to_value(&graph).unwrap_or_default();
    body["window_end"] = window_end;
    (200, body.to_string())
}

/// Answers an admin API question on the engine thread.
pub(crate) fn answer(
    engine: &mut Engine,
    query: AdminQuery,
    watch: Option<&mut TuningWatch>,
    recent: &std::collections::VecDeque<serde_json::Value>,
) {
    let error = |status: u16, message: String| (status, serde_json::json!({ "error": message }).to_string());
    let response = match (query.path.as_str(), &query.body, watch) {
        ("/api/baselines", _, _) => {
            let recent: Vec<BTreeMap<String, f64>> = engine
                .recent_windows()
                .map(|(_, rates)| rates.iter().map(|(edge, rate)| (edge.to_string(), *rate)).collect())
                .collect();
            list(engine.store(), &recent, &query.params, API_MAX_ROWS)
        }
        ("/api/snapshot", None, _) => {
            (200, String::from_utf8(stormwatch_baseline::encode_snapshot(engine.store())).unwrap_or_default())
        }
        ("/api/snapshot", Some(body), _) => {
            let origin = Path::new("the imported snapshot");
            match decode_snapshot(body.as_bytes(), engine.store().max_keys(), origin) {
                Ok(store) => {
                    let edges = store.edges_tracked();
                    tracing::info!(who = %query.who, edges, "baselines replaced by an imported snapshot");
                    engine.replace_store(store);
                    (200, serde_json::json!({ "summary": format!("{edges} edges imported") }).to_string())
                }
                Err(e) => error(400, e.to_string()),
            }
        }
        ("/api/graph", _, _) => graph(engine, &query.params, recent),
        ("/api/alerts", _, _) => {
            let limit = query.params.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
            let matching: Vec<&serde_json::Value> = recent
                .iter()
                .rev()
                .filter(|a| query.params.get("kind").is_none_or(|k| a["kind"] == k.as_str()))
                .filter(|a| {
                    query.params.get("match").is_none_or(|m| {
                        a["edge"].to_string().contains(m.as_str()) || a["entry"].to_string().contains(m.as_str())
                    })
                })
                .take(limit)
                .collect();
            (200, serde_json::json!({ "alerts": matching }).to_string())
        }
        ("/api/explain", _, _) => match query.params.get("id") {
            None => error(400, "explain needs ?id=ALERT_ID_OR_FINGERPRINT".into()),
            Some(id) => match find(recent.iter(), id) {
                None => error(
                    404,
                    format!(
                        "no recent alert has id or fingerprint {id:?} (this engine keeps its last {RECENT_ALERTS})"
                    ),
                ),
                Some(alert) => (200, explanation(alert, &inspect::rows(engine.store()), engine.tuning()).to_string()),
            },
        },
        (_, _, None) => error(503, "this engine has no tuning file".into()),
        ("/api/tuning", None, Some(watch)) => {
            let text = std::fs::read_to_string(watch.path()).unwrap_or_default();
            let stats = engine.stats();
            let shadowed: BTreeMap<&str, u64> = AlertKind::ALL
                .iter()
                .zip(stats.shadowed)
                .filter(|(_, n)| *n > 0)
                .map(|(kind, n)| (kind.as_str(), n))
                .collect();
            let body = serde_json::json!({
                "path": watch.path().display().to_string(),
                "summary": crate::tuning::describe(engine.tuning()),
                "shadowed": shadowed,
                "suppressed": stats.suppressed,
                "text": text,
            });
            (200, body.to_string())
        }
        ("/api/tuning", Some(body), Some(watch)) => match serde_json::from_str::<Change>(body) {
            Err(e) => error(400, format!("not a tuning change: {e}")),
            Ok(change) => {
                match crate::tuning::append(watch.path(), &change, &query.who, stormwatch_model::wall_clock_nanos()) {
                    Ok(tuning) => {
                        tracing::info!(who = %query.who, change = ?change, tuning = %crate::tuning::describe(&tuning), "tuning changed through the admin API");
                        watch.mark_seen();
                        let summary = crate::tuning::describe(&tuning);
                        engine.set_tuning(tuning);
                        (200, serde_json::json!({ "summary": summary }).to_string())
                    }
                    Err(message) => error(400, message),
                }
            }
        },
        (other, _, _) => error(404, format!("no such API: {other}")),
    };
    let _ = query.reply.send(response);
}

/// `stormwatch baseline ...`.
pub(crate) fn run(args: BaselineArgs) -> anyhow::Result<()> {
    match args.command {
        BaselineCommand::List { source, filter, json } => {
            let (total, rows) = fetch(&source, &params(&filter))?;
            print_rows(&rows, total, json)
        }
        BaselineCommand::Show { edge, source, json } => {
            let mut params = BTreeMap::from([("match".to_string(), edge.clone())]);
            params.insert("sort".into(), "samples".into());
            let (_, rows) = fetch(&source, &params)?;
            if rows.is_empty() {
                bail!("no baseline's edge or entry contains {edge:?}; `stormwatch baseline list` shows what there is");
            }
            print_rows(&rows, rows.len(), json)
        }
        BaselineCommand::Export { engine, models, output } => {
            let document = match &engine {
                Some(url) => http_request(url, "GET", "/api/snapshot", &BTreeMap::new(), None)?,
                None => {
                    let path = models.join(SNAPSHOT_FILE);
                    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
                }
            };
            match &output {
                Some(path) => {
                    stormwatch_io::write_private_file(path, (document.trim_end().to_string() + "\n").as_bytes())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("baselines written to {}", path.display());
                }
                None => println!("{}", document.trim_end()),
            }
            Ok(())
        }
        BaselineCommand::Import { file, target } => {
            let store = load(&file)?;
            let edges = store.edges_tracked();
            match &target.engine {
                Some(url) => {
                    let document = std::fs::read_to_string(&file)?;
                    let token = token_for(&target)?;
                    let who = who_of(&target);
                    let answer =
                        http_request(url, "POST", "/api/snapshot", &BTreeMap::new(), Some((&document, &token, &who)))?;
                    let summary: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
                    println!("imported by the engine at {url}: {}", summary["summary"].as_str().unwrap_or(&answer));
                }
                None => {
                    let path = stormwatch_baseline::write_snapshot(&target.models, &store)?;
                    println!("{edges} edges written to {} (start the engine on these models)", path.display());
                }
            }
            Ok(())
        }
        BaselineCommand::Explain { alert, engine, alerts, models, json } => {
            let explained: serde_json::Value = match (&engine, &alerts) {
                (Some(url), _) => {
                    let params = BTreeMap::from([("id".to_string(), alert.clone())]);
                    serde_json::from_str(&http_request(url, "GET", "/api/explain", &params, None)?)?
                }
                (None, Some(file)) => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read the alerts file {}", file.display()))?;
                    let all: Vec<serde_json::Value> =
                        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
                    let found = find(all.iter(), &alert)
                        .with_context(|| format!("no alert in {} has id or fingerprint {alert:?}", file.display()))?;
                    let tuning = crate::tuning::load(&models.join(crate::tuning::TUNING_FILE))
                        .map_err(anyhow::Error::msg)?
                        .unwrap_or_default();
                    explanation(found, &inspect::rows(&load(&models)?), &tuning)
                }
                (None, None) => bail!("explain needs --engine URL, or --alerts FILE (with --models DIR)"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&explained)?);
                return Ok(());
            }
            println!("{}", explained["why"].as_str().unwrap_or(""));
            println!("rule: {}", explained["rule"].as_str().unwrap_or(""));
            println!("alert: {}", explained["explanation"].as_str().unwrap_or(""));
            if let Some(traces) = explained["exemplar_trace_ids"].as_array() {
                let ids: Vec<&str> = traces.iter().filter_map(|t| t.as_str()).collect();
                println!("exemplar traces: {}", ids.join(" "));
            }
            let rows: Vec<BaselineRow> = serde_json::from_value(explained["baselines_now"].clone()).unwrap_or_default();
            if !rows.is_empty() {
                println!("baselines of the edge now:");
                print_rows(&rows, rows.len(), false)?;
            }
            let tuning = &explained["tuning"];
            println!(
                "tuning: detector {}, edge {}, {} matching overrides",
                tuning["detector_mode"].as_str().unwrap_or("on"),
                if tuning["edge_frozen"] == true { "frozen" } else { "learning" },
                tuning["overrides"].as_array().map_or(0, |o| o.len())
            );
            Ok(())
        }
        BaselineCommand::Set { edge, entry, kind, threshold_factor, limit, min_samples, severity, disable, target } => {
            let change = Change::Set {
                edge,
                entry,
                kind,
                threshold_factor,
                limit,
                min_samples,
                severity,
                enabled: disable.then_some(false),
                reason: target.reason.clone(),
            };
            write(&target, &change)
        }
        BaselineCommand::Freeze { edge, all: _, target } => {
            write(&target, &Change::Freeze { edge, reason: target.reason.clone() })
        }
        BaselineCommand::Unfreeze { edge, all: _, target } => {
            write(&target, &Change::Unfreeze { edge, reason: target.reason.clone() })
        }
        BaselineCommand::Shadow { kind, mode, target } => {
            write(&target, &Change::Mode { kind, mode, reason: target.reason.clone() })
        }
        BaselineCommand::Allow { entry, clients, user, until, target } => {
            write(&target, &Change::Allow { entry, clients, user, until, reason: target.reason.clone() })
        }
        BaselineCommand::Diff { before, after, json, limit } => {
            let before_rows = inspect::rows(&load(&before)?);
            let after_rows = inspect::rows(&load(&after)?);
            let changes = inspect::diff(&before_rows, &after_rows);
            if json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
                return Ok(());
            }
            println!("{} of {} baselines changed ({} before)", changes.len(), after_rows.len(), before_rows.len());
            if !changes.is_empty() {
                println!("{:<8} {:>9} {:>9} {:>9} {:>9}  baseline", "change", "p99", "now", "samples", "now");
            }
            for change in changes.iter().take(limit) {
                let (label, b, a) = match (&change.before, &change.after) {
                    (None, Some(a)) => ("new", None, Some(a)),
                    (Some(b), None) => ("gone", Some(b), None),
                    (b, a) => ("moved", b.as_ref(), a.as_ref()),
                };
                let number = |row: Option<&BaselineRow>, f: fn(&BaselineRow) -> String| row.map_or("-".into(), f);
                println!(
                    "{label:<8} {:>9} {:>9} {:>9} {:>9}  {}",
                    number(b, |r| trim(r.p99)),
                    number(a, |r| trim(r.p99)),
                    number(b, |r| r.samples.to_string()),
                    number(a, |r| r.samples.to_string()),
                    change.key
                );
            }
            if changes.len() > limit {
                println!("... {} more (--limit, or --json for all)", changes.len() - limit);
            }
            Ok(())
        }
    }
}

/// Who makes a change, for the audit trail.
/// Who the audit trail names: `--who`, else `$USER`, else "cli"; held to what the admin API
/// takes (letters, digits, `.-_@+` and spaces, 64 bytes).
fn who_of(target: &TuningTarget) -> String {
    let who = target.who.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
    let who: String = who
        .trim()
        .chars()
        .map(|c| if stormwatch_io::admin::user_char(c) { c } else { '_' })
        .take(stormwatch_io::admin::MAX_USER_BYTES)
        .collect();
    if who.is_empty() {
        "cli".into()
    } else {
        who
    }
}

/// The admin token for a write through `--engine`.
fn token_for(target: &TuningTarget) -> anyhow::Result<String> {
    if let Some(token) = &target.token {
        return Ok(token.clone());
    }
    let path = target.models.join(TOKEN_FILE);
    std::fs::read_to_string(&path).map(|t| t.trim().to_string()).with_context(|| {
        format!("--engine needs the admin token: --token, env STORMWATCH_ADMIN_TOKEN, or {}", path.display())
    })
}

/// Applies a tuning change on a running engine (through its admin API) or to the tuning file.
fn write(target: &TuningTarget, change: &Change) -> anyhow::Result<()> {
    let who = who_of(target);
    match &target.engine {
        Some(url) => {
            let token = token_for(target)?;
            let body = serde_json::to_string(change)?;
            let answer = http_request(url, "POST", "/api/tuning", &BTreeMap::new(), Some((&body, &token, &who)))?;
            let summary: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            println!("applied by the engine at {url}: {}", summary["summary"].as_str().unwrap_or(&answer));
        }
        None => {
            let path = target.models.join(crate::tuning::TUNING_FILE);
            let tuning = crate::tuning::append(&path, change, &who, stormwatch_model::wall_clock_nanos())
                .map_err(anyhow::Error::msg)?;
            println!(
                "written to {}: {} (a running engine on these models reloads it within 2 s)",
                path.display(),
                crate::tuning::describe(&tuning)
            );
        }
    }
    Ok(())
}

fn params(filter: &BaselineFilter) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut set = |key: &str, value: &Option<String>| {
        if let Some(value) = value {
            params.insert(key.to_string(), value.clone());
        }
    };
    set("service", &filter.service);
    set("to_kind", &filter.to_kind);
    set("table", &filter.table);
    set("match", &filter.matching);
    set("sort", &Some(filter.sort.clone()));
    params.insert("limit".into(), filter.limit.to_string());
    params
}

/// Rows selected by `params`, and how many baselines there are in all.
fn fetch(source: &BaselineSource, params: &BTreeMap<String, String>) -> anyhow::Result<(usize, Vec<BaselineRow>)> {
    let body = match &source.engine {
        Some(url) => http_request(url, "GET", "/api/baselines", params, None)?,
        None => {
            let path = source.snapshot.clone().unwrap_or_else(|| source.models.join(SNAPSHOT_FILE));
            let (status, body) = list(&load(&path)?, &[], params, usize::MAX);
            if status != 200 {
                bail!("{}", error_of(&body));
            }
            body
        }
    };
    #[derive(serde::Deserialize)]
    struct Page {
        total: usize,
        rows: Vec<BaselineRow>,
    }
    let page: Page = serde_json::from_str(&body).context("the engine's answer is not a baseline list")?;
    Ok((page.total, page.rows))
}

/// A snapshot file, or `baselines.json` in a models directory.
fn load(path: &Path) -> anyhow::Result<BaselineStore> {
    let file = if path.is_dir() { path.join(SNAPSHOT_FILE) } else { path.to_path_buf() };
    let bytes = std::fs::read(&file).with_context(|| {
        format!("cannot read the snapshot {} (point --models at the engine's models directory)", file.display())
    })?;
    Ok(decode_snapshot(&bytes, usize::MAX, &file)?)
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// A request to the admin API (plain HTTP/1.1; it listens on loopback or a private address);
/// a write carries (JSON body, token, who).
fn http_request(
    url: &str,
    method: &str,
    path: &str,
    params: &BTreeMap<String, String>,
    write: Option<(&str, &str, &str)>,
) -> anyhow::Result<String> {
    let address = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
    if url.starts_with("https://") {
        bail!("--engine {url}: the admin API speaks plain HTTP; use http://HOST:PORT");
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", percent_encode(v))).collect();
    let target = if query.is_empty() { path.to_string() } else { format!("{path}?{}", query.join("&")) };
    let mut stream = std::net::TcpStream::connect(address)
        .with_context(|| format!("cannot reach the engine's admin API at {address} (--engine, serve --admin)"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut early = Vec::new();
    match write {
        None => write!(stream, "{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?,
        Some((body, token, who)) => {
            // `Expect: 100-continue`: a refusal (401, 413) comes before the body is sent, so a
            // large snapshot is not sent for nothing, and the answer is not lost to a reset.
            write!(
                stream,
                "{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
                 X-Stormwatch-User: {who}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Expect: 100-continue\r\n\r\n",
                body.len()
            )?;
            early = interim_answer(&mut stream)?;
            if early.is_empty() {
                stream.write_all(body.as_bytes()).context("sending the request to the admin API")?;
            }
        }
    }
    let mut response = String::from_utf8_lossy(&early).into_owned();
    stream.read_to_string(&mut response).context("reading the admin API's answer")?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status != 200 {
        bail!("the engine at {address} answered {status}: {}", error_of(body));
    }
    Ok(body.to_string())
}

/// After a request head with `Expect: 100-continue`: empty when the server said `100
/// Continue` (or nothing within 2 s: send the body anyway), else the start of its final answer.
fn interim_answer(stream: &mut std::net::TcpStream) -> anyhow::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                head.clear();
                break;
            }
            Err(error) => return Err(error).context("reading the admin API's answer"),
        }
    }
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    if head.starts_with(b"HTTP/1.1 100") {
        head.clear();
    }
    Ok(head)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `3`, `2.5`, `0.125`: numbers without trailing zeros.
fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn print_rows(rows: &[BaselineRow], total: usize, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}  {:<24}  edge / entry",
        "table", "median", "p99", "p99.9", "samples", "since"
    );
    for row in rows {
        let since = stormwatch_model::rfc3339(row.since_unix_nano);
        let what = match (&row.entry, &row.edge) {
            (Some(entry), Some(edge)) => format!("{edge}  (entry {entry})"),
            (Some(entry), None) => format!("entry {entry}"),
            (None, Some(edge)) => edge.clone(),
            (None, None) => String::new(),
        };
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9}  {:<24}  {what}",
            row.table,
            trim(row.median),
            trim(row.p99),
            match row.learned_p999 {
                // The tail guard holds what is judged under what was learned.
                Some(learned) => format!("{}^{}", trim(row.p999), trim(learned)),
                None => trim(row.p999),
            },
            if row.held > 0 { format!("{}+{}", row.samples, row.held) } else { row.samples.to_string() },
            since
        );
    }
    println!("{} of {total} baselines", rows.len());
    if rows.iter().any(|row| row.held > 0) {
        println!(
            "n+h: n values learned, h held back (beyond anything this young baseline learned; learned once they recur in 4 different hours)"
        );
    }
    if rows.iter().any(|row| row.learned_p999.is_some()) {
        println!(
            "a^b: the learned p99.9 (b) is rising faster than the baseline may follow; judged against a (at most 2x a day)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use stormwatch_baseline::RequestMetric;
    use stormwatch_model::{RootClass, Sym};

    use super::*;

    /// A young entry judged against its route: `explain` says what judged it and lists that
    /// baseline with the entry's own.
    #[test]
    fn a_borrowed_judgement_names_the_baseline_that_judged() {
        let class = |shape: &str| RootClass {
            service: Sym::new("gateway"),
            operation: Sym::new("GET /products"),
            query_shape: Some(Sym::new(shape)),
        };
        let mut store = BaselineStore::new(100);
        for i in 0..300 {
            store.observe_request_total(class("page"), RequestMetric::Spans, 10, i);
        }
        for i in 0..40 {
            store.observe_request_total(class("expand"), RequestMetric::Spans, 40, 300 + i);
        }
        let alert = serde_json::json!({
            "kind": "request_amplification", "observed": 900.0, "unit": "spans_per_request", "expected": 10.0,
            "threshold": 180.0, "score": 5.0, "edge": null,
            "entry": {"service": "gateway", "operation": "GET /products", "query_keys": ["expand"]},
            "baseline": {"samples": 340, "since": "2027-01-15T08:00:00.000Z", "from": "every request to gateway `GET /products`"},
            "explanation": "One request ...",
        });
        let explained = explanation(&alert, &inspect::rows(&store), &Tuning::default());
        let why = explained["why"].as_str().unwrap();
        assert!(why.contains("340 samples of every request to gateway `GET /products` (the entry's own"), "{why}");
        let tables: Vec<&str> =
            explained["baselines_now"].as_array().unwrap().iter().map(|r| r["table"].as_str().unwrap()).collect();
        assert!(tables.contains(&"route_per_request:spans"), "{tables:?}");
        assert!(tables.contains(&"per_request:spans"), "the entry's own: {tables:?}");
        assert!(!tables.contains(&"service_per_request:spans"), "{tables:?}");
    }

    /// A young edge judged against every call its caller makes to that kind of callee.
    #[test]
    fn a_young_edge_names_the_scope_that_judged_it() {
        use stormwatch_model::{Edge, Node, NodeKind};
        let node = |s: &str, o: &str, kind| Node { service: Sym::new(s), operation: Sym::new(o), kind };
        let catalog = Edge {
            from: node("gateway", "GET /products", NodeKind::Service),
            to: node("catalog", "GET /items", NodeKind::Service),
        };
        let reviews = Edge { from: catalog.from, to: node("reviews", "GET /reviews", NodeKind::Service) };
        let mut store = BaselineStore::new(100);
        for i in 0..300 {
            store.observe_fanout(catalog, &[1], i);
        }
        for i in 0..40 {
            store.observe_fanout(reviews, &[20], 300 + i);
        }
        let alert = serde_json::json!({
            "kind": "fanout_amplification", "observed": 200.0, "unit": "calls_per_parent", "expected": 1.0,
            "threshold": 22.0, "score": 9.09,
            "edge": {"from": {"service": "gateway", "operation": "GET /products"},
                     "to": {"service": "reviews", "operation": "GET /reviews"}},
            "entry": null,
            "baseline": {"samples": 340, "since": "2027-01-15T08:00:00.000Z", "from": "every call from gateway to a service"},
            "explanation": "gateway `GET /products` called reviews `GET /reviews` 200 times ...",
        });
        let explained = explanation(&alert, &inspect::rows(&store), &Tuning::default());
        let why = explained["why"].as_str().unwrap();
        assert!(
            why.contains("of every call from gateway to a service (the edge's own baseline was too young"),
            "{why}"
        );
        let tables: Vec<&str> =
            explained["baselines_now"].as_array().unwrap().iter().map(|r| r["table"].as_str().unwrap()).collect();
        assert_eq!(tables, ["calls_per_parent", "kind_per_parent"], "the edge's own and the scope that judged");
    }
}

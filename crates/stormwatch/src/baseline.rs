//! `stormwatch baseline`: what the engine learned, from a running engine's admin API or offline
//! from snapshot files, as tables (or JSON with `--json`), and tuning changes made through it.
//! The engine's side of the admin API is in `admin.rs`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use stormwatch_baseline::inspect::{self, BaselineRow};
use stormwatch_baseline::{decode_snapshot, BaselineStore, SNAPSHOT_FILE};

use crate::{BaselineArgs, BaselineCommand, BaselineFilter, BaselineSource, TuningTarget};
use stormwatch_engine::admin::{explanation, find, list, TOKEN_FILE};
use stormwatch_engine::tuning::Change;

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
        BaselineCommand::Export { engine, models, output } => export(engine.as_deref(), &models, output.as_deref()),
        BaselineCommand::Import { file, target } => import(&file, &target),
        BaselineCommand::Explain { alert, engine, alerts, models, json } => {
            let explained = explain(&alert, engine.as_deref(), alerts.as_deref(), &models)?;
            print_explained(&explained, json)
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
        BaselineCommand::Diff { before, after, json, limit } => diff(&before, &after, json, limit),
    }
}

/// `baseline export`: the snapshot document, from a running engine or the models directory.
fn export(engine: Option<&str>, models: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    let document = match engine {
        Some(url) => http_request(url, "GET", "/api/snapshot", &BTreeMap::new(), None)?,
        None => {
            let path = models.join(SNAPSHOT_FILE);
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
        }
    };
    match output {
        Some(path) => {
            stormwatch_io::write_private_file(path, (document.trim_end().to_string() + "\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("baselines written to {}", path.display());
        }
        None => println!("{}", document.trim_end()),
    }
    Ok(())
}

/// `baseline import`: a snapshot file, checked, into a running engine or a models directory.
fn import(file: &Path, target: &TuningTarget) -> anyhow::Result<()> {
    let store = load(file)?;
    let edges = store.edges_tracked();
    match &target.engine {
        Some(url) => {
            let document = std::fs::read_to_string(file)?;
            let token = token_for(target)?;
            let who = who_of(target);
            let answer = http_request(url, "POST", "/api/snapshot", &BTreeMap::new(), Some((&document, &token, &who)))?;
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

/// `baseline explain`: why an alert fired, from a running engine or offline from an alerts
/// file and the models directory.
fn explain(
    alert: &str,
    engine: Option<&str>,
    alerts: Option<&Path>,
    models: &Path,
) -> anyhow::Result<serde_json::Value> {
    match (engine, alerts) {
        (Some(url), _) => {
            let params = BTreeMap::from([("id".to_string(), alert.to_string())]);
            Ok(serde_json::from_str(&http_request(url, "GET", "/api/explain", &params, None)?)?)
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the alerts file {}", file.display()))?;
            let all: Vec<stormwatch_model::Alert> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            let found = find(all.iter(), alert)
                .with_context(|| format!("no alert in {} has id or fingerprint {alert:?}", file.display()))?;
            let tuning = stormwatch_engine::tuning::load(&models.join(stormwatch_engine::tuning::TUNING_FILE))?
                .unwrap_or_default();
            Ok(explanation(found, &inspect::rows(&load(models)?), &tuning))
        }
        (None, None) => bail!("explain needs --engine URL, or --alerts FILE (with --models DIR)"),
    }
}

fn print_explained(explained: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(explained)?);
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

/// `baseline diff`: what changed between two models directories.
fn diff(before: &Path, after: &Path, json: bool, limit: usize) -> anyhow::Result<()> {
    let before_rows = inspect::rows(&load(before)?);
    let after_rows = inspect::rows(&load(after)?);
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
            let path = target.models.join(stormwatch_engine::tuning::TUNING_FILE);
            let tuning = stormwatch_engine::tuning::append(&path, change, &who, stormwatch_model::wall_clock_nanos())?;
            println!(
                "written to {}: {} (a running engine on these models reloads it within 2 s)",
                path.display(),
                stormwatch_engine::tuning::describe(&tuning)
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

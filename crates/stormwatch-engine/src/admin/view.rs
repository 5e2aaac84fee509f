//! What the admin API reads, published by the engine thread so that no read runs on it: the
//! baselines as rows, the last judged window's graph, the recent alerts and the tuning in
//! force. A dashboard polling the API costs the engine a look at the baselines that changed
//! since it last published, at most once per [`FRESH`] while someone reads, and nothing while
//! no one does.
//!
//! - **Rows.** The engine lists each baseline once when it learns (the store's change list);
//!   asked, it hands the figures of those that changed (numbers and keys, no text) to the
//!   view. Readers render them into the rows they keep, in the API's default order (most
//!   samples first, then by key), so `/api/baselines?limit=1000` takes the first thousand. A
//!   reader finding the rows older than [`FRESH`] asks for a publication and waits for it (at
//!   most [`PUBLISH_WAIT`]): the answer then reflects the baselines of at most a turn ago.
//!   Each row is one baseline's figures at one moment; the answer says which judged window
//!   and event time they reflect (`window_end`, `watermark`).
//! - **Graph and recent windows**: swapped whole at each publication after a window closed.
//! - **Alerts**: appended by the engine as it raises them, the last [`RECENT_ALERTS`] kept.
//! - **Tuning**: swapped whenever the engine puts one in force.
//!
//! Writes (tuning changes, snapshot imports) are still answered on the engine thread, in order
//! with the traffic. The export of the whole store is a copy the engine thread makes and the
//! snapshot thread encodes (`crate::saving`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use stormwatch_baseline::inspect::{KeptRow, RowFigures, RowKey};
use stormwatch_detect::tuning::Tuning;
use stormwatch_detect::{EdgeGauge, Engine};
use stormwatch_io::admin::{AdminReads, AdminRequest};
use stormwatch_io::Metrics;
use stormwatch_model::{Alert, AlertKind};

use super::{alerts, error, explanation, find, graph, select, API_MAX_ROWS, RECENT_ALERTS};

/// How old the rows may be when read; older, the reader asks the engine for what changed.
pub(crate) const FRESH: Duration = Duration::from_secs(1);
/// The longest a reader waits for the engine to publish; then it answers with what there is
/// (its `watermark` says how old).
pub(crate) const PUBLISH_WAIT: Duration = Duration::from_secs(2);

/// The published view. Locks: a reader taking in a publication holds `rows` (write) and then
/// `published` briefly; the engine only ever takes `published`, `alerts` and `tuning`, each
/// briefly, so no reader can hold the engine up.
pub struct AdminView {
    published: Mutex<Publication>,
    /// Signalled at each publication.
    publishing: Condvar,
    /// A reader wants a publication.
    asked: AtomicBool,
    rows: RwLock<Rows>,
    /// Shared, so a reader copies pointers under the lock and reads without it.
    alerts: Mutex<VecDeque<Arc<Alert>>>,
    /// Alerts added so far.
    alerts_added: AtomicU64,
    /// The last answers to the baselines and graph reads, by request, with what they reflect:
    /// dashboards asking the same between two publications share one answer.
    answers: Mutex<HashMap<String, (Stamp, Arc<str>)>>,
    tuning: Mutex<Arc<Tuning>>,
    /// Shadowed and suppressed counts, as `/metrics` has them (the engine's, once it runs).
    metrics: OnceLock<Arc<Metrics>>,
    /// The tuning file, when the engine has one.
    tuning_path: Option<PathBuf>,
}

/// Answers kept at most ([`AdminView::answers`]); past it they are dropped and made anew.
/// Only answers up to [`MOST_ANSWER_BYTES`] are kept (a thousand rows are about 170 KB): at
/// most 8 MB.
const MOST_ANSWERS: usize = 32;
const MOST_ANSWER_BYTES: usize = 256 * 1024;

/// What an answer reflects: the rows taken in, the window published, the alerts added.
type Stamp = (u64, u64, u64);

/// What the engine last published.
#[derive(Default)]
struct Publication {
    /// Publications so far.
    count: u64,
    at: Option<Instant>,
    /// Figures not yet taken into the rows; `all`: they replace every row.
    figures: Vec<RowFigures>,
    all: bool,
    window: Arc<Window>,
}

/// The last judged window, as the graph and the rows' recent values show it.
#[derive(Default)]
struct Window {
    /// The publication it came with.
    publication: u64,
    end: u64,
    /// Event time the baselines had learned up to at the publication.
    watermark: u64,
    /// Shared between the publications of one window.
    gauges: Arc<Vec<EdgeGauge>>,
    /// The last windows' calls per entry request, by edge name, oldest first (shared alike).
    recent: Arc<Vec<BTreeMap<String, f64>>>,
}

/// The rows as readers show them, most samples first, then by key: figures and names, each
/// rendered when shown.
#[derive(Default)]
struct Rows {
    /// Publications taken in.
    version: u64,
    /// Each baseline's place in `ordered` (the key text is the row's, shared).
    places: HashMap<RowKey, (u64, Arc<str>)>,
    ordered: BTreeMap<(Reverse<u64>, Arc<str>), KeptRow>,
}

impl Rows {
    /// Takes in a publication's figures (replacing every row when `all`).
    fn take(&mut self, all: bool, figures: Vec<RowFigures>) {
        self.version += 1;
        if all {
            self.places.clear();
            self.ordered.clear();
        }
        for figure in figures {
            // A row seen before keeps its names; only its numbers change.
            let known =
                self.places.remove(&figure.key).and_then(|place| self.ordered.remove(&(Reverse(place.0), place.1)));
            let row = match known {
                Some(mut row) => {
                    row.refresh(figure);
                    row
                }
                None => KeptRow::new(figure),
            };
            let place = (row.figures().samples(), row.key().clone());
            self.places.insert(figure.key, place.clone());
            self.ordered.insert((Reverse(place.0), place.1), row);
        }
    }
}

impl AdminView {
    pub(crate) fn new(tuning_path: Option<PathBuf>, tuning: &Tuning) -> AdminView {
        AdminView {
            published: Mutex::default(),
            publishing: Condvar::new(),
            asked: AtomicBool::new(false),
            rows: RwLock::default(),
            alerts: Mutex::default(),
            alerts_added: AtomicU64::new(0),
            answers: Mutex::default(),
            tuning: Mutex::new(Arc::new(tuning.clone())),
            metrics: OnceLock::new(),
            tuning_path,
        }
    }

    /// Engine thread, at its start: its counters.
    pub(crate) fn attach(&self, metrics: &Arc<Metrics>) {
        let _ = self.metrics.set(metrics.clone());
    }

    /// Engine thread: publishes what changed when a reader asked. Cheap otherwise (one atomic
    /// load).
    pub(crate) fn publish_if_asked(&self, engine: &mut Engine) {
        if !self.asked.swap(false, Ordering::AcqRel) {
            return;
        }
        let (all, figures) = engine.take_changed_rows();
        let end = engine.last_window_end();
        let watermark = engine.store().watermark();
        // The graph and the recent windows change when a window closes: made then, outside the
        // lock, and shared by the publications until the next.
        let last = lock(&self.published).window.clone();
        let (gauges, recent) = if last.end == end && last.publication > 0 {
            (last.gauges.clone(), last.recent.clone())
        } else {
            let recent = engine
                .recent_windows()
                .map(|(_, rates)| rates.iter().map(|(edge, rate)| (edge.to_string(), *rate)).collect())
                .collect();
            (Arc::new(engine.edge_gauges(usize::MAX)), Arc::new(recent))
        };
        let mut published = lock(&self.published);
        let publication = published.count + 1;
        let window = Arc::new(Window { publication, end, watermark, gauges, recent });
        if all {
            published.figures.clear();
            published.all = true;
        }
        published.figures.extend(figures);
        published.window = window;
        published.count = publication;
        published.at = Some(Instant::now());
        drop(published);
        self.publishing.notify_all();
    }

    /// Engine thread: the alerts it raised this turn.
    pub(crate) fn add_alerts(&self, new: &[Alert]) {
        if new.is_empty() {
            return;
        }
        let mut alerts = lock(&self.alerts);
        for alert in new {
            if alerts.len() == RECENT_ALERTS {
                alerts.pop_front();
            }
            alerts.push_back(Arc::new(alert.clone()));
        }
        self.alerts_added.fetch_add(new.len() as u64, Ordering::Release);
    }

    /// Engine thread: the tuning it put in force.
    pub(crate) fn set_tuning(&self, tuning: &Tuning) {
        *lock(&self.tuning) = Arc::new(tuning.clone());
    }

    /// The last judged window, the rows brought up to it: asks for a publication when the rows
    /// are older than [`FRESH`], and takes in what was published.
    fn fresh(&self) -> Arc<Window> {
        let mut published = lock(&self.published);
        if published.at.is_none_or(|at| at.elapsed() >= FRESH) {
            let before = published.count;
            self.asked.store(true, Ordering::Release);
            let deadline = Instant::now() + PUBLISH_WAIT;
            while published.count == before {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                published = self.publishing.wait_timeout(published, left).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        let window = published.window.clone();
        let pending = published.all || !published.figures.is_empty();
        drop(published);
        if pending {
            let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
            let mut published = lock(&self.published);
            let (all, figures) = (std::mem::take(&mut published.all), std::mem::take(&mut published.figures));
            drop(published);
            rows.take(all, figures);
        }
        window
    }

    /// The recent alerts, oldest first: pointers copied under the lock, read without it.
    fn recent(&self) -> Vec<Arc<Alert>> {
        lock(&self.alerts).iter().cloned().collect()
    }

    /// The answer to `request` made by `make` from the fresh rows and window, or the same
    /// answer made earlier for what is still the same state.
    fn answered(
        &self,
        request: &AdminRequest,
        make: impl FnOnce(&Rows, &Window) -> (u16, serde_json::Value),
    ) -> (u16, String) {
        let window = self.fresh();
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        let stamp = (rows.version, window.publication, self.alerts_added.load(Ordering::Acquire));
        let asked = format!("{request:?}");
        if let Some((made, body)) = lock(&self.answers).get(&asked) {
            if *made == stamp {
                return (200, body.to_string());
            }
        }
        let (status, body) = make(&rows, &window);
        drop(rows);
        if status != 200 {
            return (status, body.to_string());
        }
        let body = reflecting(body, &window);
        if body.len() <= MOST_ANSWER_BYTES {
            let mut answers = lock(&self.answers);
            if answers.len() >= MOST_ANSWERS {
                answers.clear();
            }
            answers.insert(asked, (stamp, Arc::from(body.as_str())));
        }
        (200, body)
    }

    /// `GET /api/tuning`: the file, what it does, and what it shadowed and suppressed so far.
    fn tuning(&self) -> (u16, String) {
        let Some(path) = &self.tuning_path else { return error(503, "this engine has no tuning file".into()) };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let tuning = lock(&self.tuning).clone();
        let Some(metrics) = self.metrics.get() else { return error(503, "the engine is starting".into()) };
        let shadowed: BTreeMap<&str, u64> = AlertKind::ALL
            .iter()
            .zip(&metrics.alerts_shadowed)
            .map(|(kind, n)| (kind.as_str(), Metrics::get(n)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let body = serde_json::json!({
            "path": path.display().to_string(),
            "summary": crate::tuning::describe(&tuning),
            "shadowed": shadowed,
            "suppressed": Metrics::get(&metrics.findings_suppressed_total),
            "text": text,
        });
        (200, body.to_string())
    }
}

impl std::fmt::Debug for AdminView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminView").finish_non_exhaustive()
    }
}

impl AdminReads for AdminView {
    fn answer(&self, request: &AdminRequest) -> Option<(u16, String)> {
        Some(match request {
            AdminRequest::Baselines(params) => self.answered(request, |rows, window| {
                select(params, API_MAX_ROWS, (rows.ordered.len(), rows.ordered.values(), true), &window.recent)
            }),
            AdminRequest::Graph { limit, focus } => self.answered(request, |_, window| {
                (200, graph((&window.gauges, window.end), *limit, focus.as_deref(), &self.recent()))
            }),
            AdminRequest::Alerts { limit, kind, matching } => {
                alerts(&self.recent(), *limit, kind.as_deref(), matching.as_deref())
            }
            AdminRequest::Explain { id } => {
                let recent = self.recent();
                let Some(alert) = find(recent.iter().map(Arc::as_ref), id) else {
                    return Some(error(
                        404,
                        format!(
                            "no recent alert has id or fingerprint {id:?} (this engine keeps its last {RECENT_ALERTS})"
                        ),
                    ));
                };
                self.fresh();
                let tuning = lock(&self.tuning).clone();
                let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
                (200, explanation(alert, rows.ordered.values(), &tuning).to_string())
            }
            AdminRequest::Tuning => self.tuning(),
            AdminRequest::Snapshot | AdminRequest::Import { .. } | AdminRequest::ChangeTuning { .. } => return None,
        })
    }
}

/// Adds what a 200 answer reflects: the end of the last judged window (`window_end`, when the
/// answer has none of its own) and the event time the baselines had learned up to
/// (`watermark`), both RFC 3339.
fn reflecting(body: serde_json::Value, window: &Window) -> String {
    let serde_json::Value::Object(mut object) = body else { return body.to_string() };
    let time = |nanos: u64| match nanos {
        0 => serde_json::Value::Null,
        nanos => stormwatch_model::rfc3339(nanos).into(),
    };
    object.entry("window_end").or_insert_with(|| time(window.end));
    object.insert("watermark".into(), time(window.watermark));
    serde_json::Value::Object(object).to_string()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use stormwatch_baseline::inspect::RowNames;
    use stormwatch_baseline::BaselineStore;
    use stormwatch_detect::EngineConfig;
    use stormwatch_model::{Edge, Node, NodeKind, Sym};

    use super::*;

    fn edge(i: u64) -> Edge {
        Edge {
            from: Node::service(Sym::new("gateway"), Sym::new("GET /feed")),
            to: Node {
                service: Sym::new("postgresql"),
                operation: Sym::new(&format!("SELECT * FROM t{i}")),
                kind: NodeKind::Database,
            },
        }
    }

    /// A store whose edge `i` has learned `10 + i` parent spans.
    fn store(edges: u64) -> BaselineStore {
        let mut store = BaselineStore::new(10_000);
        for i in 0..edges {
            for k in 0..10 + i {
                store.observe_fanout(edge(i), &[1 + k % 3], 1_000 + k);
            }
        }
        store
    }

    /// `request` answered by the view on another thread while this one turns the engine, as
    /// the engine thread does.
    fn read(view: &Arc<AdminView>, engine: &mut Engine, request: AdminRequest) -> (u16, serde_json::Value) {
        let reader = std::thread::spawn({
            let view = view.clone();
            move || view.answer(&request).expect("a read")
        });
        while !reader.is_finished() {
            view.publish_if_asked(engine);
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, body) = reader.join().unwrap();
        (status, serde_json::from_str(&body).unwrap())
    }

    fn baselines(query: &[(&str, &str)]) -> AdminRequest {
        AdminRequest::Baselines(query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// The view answers what the engine thread answered from its own store (the same rows, in
    /// the same order, filtered and sorted alike), and follows what it learns.
    #[test]
    fn the_published_rows_answer_as_the_store_does_and_follow_it() {
        let view = Arc::new(AdminView::new(None, &Tuning::default()));
        let mut engine = Engine::new(EngineConfig::default(), store(30), || 0);
        for query in [vec![], vec![("limit", "5")], vec![("sort", "p99"), ("limit", "7")], vec![("match", "t2")]] {
            let (status, published) = read(&view, &mut engine, baselines(&query));
            let params = baselines(&query);
            let AdminRequest::Baselines(params) = params else { unreachable!() };
            let (own_status, own) = super::super::list(engine.store(), &[], &params, API_MAX_ROWS);
            let own: serde_json::Value = serde_json::from_str(&own).unwrap();
            assert_eq!((status, own_status), (200, 200));
            assert_eq!(published["rows"], own["rows"], "{query:?}");
            assert_eq!(published["total"], own["total"], "{query:?}");
        }
        // Most samples first: the scope of every call to a database (10 + 11 + ... + 39).
        let (_, first) = read(&view, &mut engine, baselines(&[("limit", "1")]));
        assert_eq!(first["rows"][0]["samples"], 735, "{first}");

        // Learned since: once the rows are older than FRESH, the next read brings them up.
        engine.replace_store(store(31));
        std::thread::sleep(FRESH + Duration::from_millis(50));
        let (_, first) = read(&view, &mut engine, baselines(&[("limit", "1")]));
        assert_eq!(first["rows"][0]["samples"], 735 + 40, "{first}");
        assert!(first.get("watermark").is_some() && first.get("window_end").is_some(), "{first}");
        let (_, edges) = read(&view, &mut engine, baselines(&[("table", "calls_per_parent"), ("limit", "1")]));
        assert_eq!(edges["rows"][0]["samples"], 40, "{edges}");
        assert_eq!(edges["total"], 33, "31 edges and their 2 scopes: {edges}");
        // A bad parameter is still a 400 that names it.
        let (status, answer) = read(&view, &mut engine, baselines(&[("sortt", "p99")]));
        assert_eq!(status, 400);
        assert!(answer["error"].as_str().unwrap().contains("sortt"), "{answer}");
    }

    /// Rows move with their samples, each once, and a publication of everything replaces them.
    #[test]
    fn rows_keep_the_default_order_as_they_learn() {
        let mut store = store(3);
        let mut rows = Rows::default();
        let (all, figures) = stormwatch_baseline::inspect::take_changed(&mut store);
        rows.take(all, figures);
        let fanout = |rows: &Rows| -> Vec<String> {
            rows.ordered
                .values()
                .filter(|r| r.table() == "calls_per_parent")
                .map(|r| format!("{} {}", r.figures().samples(), r.edge().unwrap_or("")))
                .collect()
        };
        assert!(fanout(&rows)[0].starts_with("12 "), "{:?}", fanout(&rows));
        for k in 0..5 {
            store.observe_fanout(edge(0), &[1], 5_000 + k);
        }
        let (all, figures) = stormwatch_baseline::inspect::take_changed(&mut store);
        assert!(!all && figures.len() == 3, "the edge and its two scopes");
        rows.take(all, figures);
        let now = fanout(&rows);
        assert_eq!(now.len(), 3, "each row once: {now:?}");
        assert!(now[0].starts_with("15 ") && now[0].ends_with("SELECT * FROM t0`"), "{now:?}");
        assert_eq!(rows.places.len(), rows.ordered.len());
        let (all, figures) = stormwatch_baseline::inspect::take_changed(&mut BaselineStore::new(10));
        rows.take(all, figures);
        assert!(rows.ordered.is_empty() && rows.places.is_empty());
    }

    /// Alerts are read as the engine adds them, the newest first, the last RECENT_ALERTS kept.
    #[test]
    fn alerts_are_read_without_a_publication() {
        let view = AdminView::new(None, &Tuning::default());
        let alert = |id: usize| -> Alert {
            let mut alert = serde_json::json!({
                "schema": stormwatch_model::ALERT_SCHEMA, "id": format!("a{id}"), "fingerprint": "f", "severity": "warning",
                "kind": "new_edge", "observed": 1.0, "unit": "calls", "expected": 0.0, "threshold": 0.0, "score": 1.0,
                "detected_at": "2027-01-15T09:00:00.000Z", "edge": null, "entry": null,
                "window": {"start": "2027-01-15T08:59:50.000Z", "end": "2027-01-15T09:00:00.000Z"},
                "baseline": {"samples": 0, "since": "2027-01-15T08:00:00.000Z"},
                "count": 1, "exemplar_trace_ids": [], "contributors": [], "explanation": "x",
            });
            alert["id"] = format!("a{id}").into();
            serde_json::from_value(alert).unwrap()
        };
        let batch: Vec<Alert> = (0..RECENT_ALERTS + 5).map(alert).collect();
        view.add_alerts(&batch);
        let (status, body) =
            view.answer(&AdminRequest::Alerts { limit: 2, kind: None, matching: None }).expect("answered");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200);
        let ids: Vec<&str> = body["alerts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [format!("a{}", RECENT_ALERTS + 4), format!("a{}", RECENT_ALERTS + 3)]);
        assert_eq!(lock(&view.alerts).len(), RECENT_ALERTS);
        assert!(view.answer(&AdminRequest::Snapshot).is_none(), "the export is a copy of the store");
    }
}

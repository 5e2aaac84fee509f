use super::*;

fn sample_store() -> BaselineStore {
    let node = |s: &str, o: &str, kind| Node { service: Sym::new(s), operation: Sym::new(o), kind };
    let edge = Edge {
        from: node("reviews", "GET /reviews", NodeKind::Service),
        to: node("sqlite", "SELECT name FROM users WHERE id = ?", NodeKind::Database),
    };
    let class = RootClass {
        service: Sym::new("gateway"),
        operation: Sym::new("GET /products"),
        query_shape: Some(Sym::new("page")),
    };
    let mut store = BaselineStore::new(100);
    for i in 0..300 {
        store.observe_fanout(edge, &[1 + i % 5], 1_000 + i);
        store.observe_request_edge(class, edge, 3, 1_000 + i);
        store.observe_request_work(class, edge, 700 + i * 13 % 400, 1_000 + i);
        store.observe_request_bytes(class, Edge::entering(&class), 20_000 + i * 101 % 9_000, 1_000 + i);
        store.observe_request_total(class, RequestMetric::Spans, 12, 1_000 + i);
        store.observe_window(WindowMetric::CacheMissRatio, edge, 100, 1_000 + i);
        store.observe_window_class(class, edge, 30, 1_000 + i);
        store.observe_seasonal(WindowMetric::WorkPerEntry, edge, 1_000 + i % 7, i * 3_600_000_000_000);
    }
    store.correlated = Some(SubspaceModel {
        edges: vec![edge, Edge { from: edge.to, to: edge.from }],
        mean: vec![0.1, 2.0 / 3.0],
        scale: vec![0.3, 1e-7],
        components: vec![vec![std::f64::consts::FRAC_1_SQRT_2, -std::f64::consts::FRAC_1_SQRT_2]],
        kept: 1,
        threshold: 19.634_217_1,
        typical: 1.4,
        samples: 120,
        fitted_unix_nano: 77,
    });
    store.watermark_unix_nano = 99;
    store
}

#[test]
fn round_trip_is_exact_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let store = sample_store();
    let path = write_snapshot(dir.path(), &store).unwrap();
    let first = fs::read(&path).unwrap();
    let restored = load_snapshot(dir.path(), 100).unwrap().unwrap();
    assert_eq!(restored.fanout, store.fanout);
    assert_eq!(restored.request_edges, store.request_edges);
    assert_eq!(restored.request_work, store.request_work);
    assert_eq!(restored.request_work.len(), 1);
    assert_eq!(restored.request_bytes, store.request_bytes);
    assert!(restored.request_bytes.keys().all(|(_, edge)| edge.from.is_clients()), "the entry's pseudo-edge");
    assert_eq!(restored.request_totals, store.request_totals);
    assert_eq!(restored.class_scopes, store.class_scopes);
    assert_eq!(restored.class_scopes.len(), 3, "route, service and system");
    assert_eq!(restored.edge_scopes, store.edge_scopes);
    assert_eq!(restored.edge_scopes.len(), 2, "service pair and caller to kind");
    assert_eq!(restored.windows, store.windows);
    assert_eq!(restored.window_classes, store.window_classes);
    assert_eq!(restored.seasonal, store.seasonal);
    assert_eq!(restored.correlated, store.correlated);
    assert!(restored.seasonal.values().all(|p| p.mature_hours() == 24));
    assert_eq!(restored.watermark_unix_nano, 99);
    write_snapshot(dir.path(), &restored).unwrap();
    assert_eq!(fs::read(&path).unwrap(), first, "same state, same bytes");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "owner only");
    }
    assert!(!dir.path().join("baselines.json.tmp").exists());
}

/// What engines share through Kafka: the file's document; a merger adopting another
/// store's window baselines keeps its own per-trace ones.
#[test]
fn shared_documents_decode_and_window_baselines_are_adopted_alone() {
    let store = sample_store();
    let bytes = encode_snapshot(&store);
    let origin = Path::new("topic g.baselines (engine e-1)");
    let shared = decode_snapshot(&bytes, 100, origin).unwrap();
    assert!(shared.window_samples() > 0);
    assert_eq!(shared.window_samples(), store.window_samples());

    let mut merger = BaselineStore::new(100);
    merger.observe_fanout(*store.fanout.keys().next().unwrap(), &[7], 1);
    let own_fanout = merger.fanout.clone();
    merger.adopt_windows(shared);
    assert_eq!(merger.fanout, own_fanout, "per-trace baselines stay the merger's own");
    assert_eq!(merger.windows, store.windows);
    assert_eq!(merger.seasonal, store.seasonal);
    assert_eq!(merger.correlated, store.correlated);

    let error = decode_snapshot(b"{}", 100, origin).unwrap_err().to_string();
    assert!(error.contains("engine e-1"), "{error}");
}

/// Snapshots written before the window tables existed still load (the fields are additive).
#[test]
fn snapshots_without_window_tables_load() {
    let dir = tempfile::tempdir().unwrap();
    let earlier = r#"{"format":"stormwatch.baselines","version":1,"watermark_unix_nano":5,
        "fanout":[],"request_edges":[],"request_totals":[]}"#;
    fs::write(dir.path().join(SNAPSHOT_FILE), earlier).unwrap();
    let store = load_snapshot(dir.path(), 10).unwrap().unwrap();
    assert_eq!(store.watermark_unix_nano, 5);
    assert!(store.windows.is_empty() && store.window_classes.is_empty());
}

/// Well-formed but absurd documents are refused, naming what is wrong; names are held to
/// what ingest keeps (escaped, cut to length), never refused for their text.
#[test]
fn absurd_snapshots_are_refused_and_names_are_kept_as_ingest_keeps_them() {
    let origin = Path::new("the imported snapshot");
    let good: serde_json::Value = serde_json::from_slice(&encode_snapshot(&sample_store())).unwrap();
    let refused = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut doc = good.clone();
        change(&mut doc);
        decode_snapshot(&serde_json::to_vec(&doc).unwrap(), 100, origin).err().map(|e| e.to_string())
    };
    assert!(refused(&|_| {}).is_none());
    type Change<'a> = &'a dyn Fn(&mut serde_json::Value);
    let cases: [(Change<'_>, &str); 11] = [
        (&|d| d["fanout"][0]["calls_per_parent"]["ewma_variance"] = (-4.0).into(), "fanout[0]: ewma_variance"),
        (&|d| d["class_scopes"][2]["level"] = "galaxy".into(), "class_scopes[2]: level \"galaxy\""),
        (&|d| d["class_scopes"][0]["per_request"]["weight"] = 7.into(), "class_scopes[0]: weight"),
        (&|d| d["edge_scopes"][0]["to"] = serde_json::Value::Null, "edge_scopes[0]: level \"pair\""),
        (&|d| d["edge_scopes"][1]["kind"] = "nebula".into(), "edge_scopes[1]: unknown node kind"),
        (&|d| d["edge_scopes"][1]["calls_per_parent"]["weight"] = 7.into(), "edge_scopes[1]: weight"),
        (&|d| d["watermark_unix_nano"] = u64::MAX.into(), "after the year 2200"),
        (&|d| d["windows"][0]["thousandths"]["since_unix_nano"] = u64::MAX.into(), "windows[0]: since_unix_nano"),
        (&|d| d["request_edges"][0]["calls_per_request"]["weight"] = 7.into(), "sum of its buckets"),
        (&|d| d["seasonal"][0]["hours"]["hours"] = serde_json::json!([]), "seasonal[0]: 0 hours"),
        (&|d| d["correlated"]["fitted_unix_nano"] = u64::MAX.into(), "correlated model"),
    ];
    for (change, words) in cases {
        let error = refused(change).unwrap_or_else(|| panic!("accepted; expected {words:?}"));
        assert!(error.contains(words) && error.contains("imported snapshot"), "{error}");
    }
    let error = decode_snapshot(&encode_snapshot(&sample_store()), 0, origin).unwrap_err().to_string();
    assert!(error.contains("baseline.max_keys"), "{error}");

    let mut doc = good.clone();
    doc["fanout"][0]["edge"]["from"]["service"] = "../../etc\n[[override]]".into();
    doc["fanout"][0]["edge"]["to"]["operation"] = "x".repeat(100_000).into();
    let store = decode_snapshot(&serde_json::to_vec(&doc).unwrap(), 100, origin).unwrap();
    let edge = store.fanout.keys().next().unwrap();
    assert_eq!(edge.from.service.as_str(), "../../etc\\n[[override]]");
    assert_eq!(edge.to.operation.as_str().len(), Dimension::Statement.max_name_bytes());
}

#[test]
fn missing_is_empty_but_corrupt_or_old_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load_snapshot(dir.path(), 10).unwrap().is_none());
    let path = dir.path().join(SNAPSHOT_FILE);
    fs::write(&path, b"{\"format\": \"stormwatch.baselines\", \"vers").unwrap();
    let error = load_snapshot(dir.path(), 10).unwrap_err().to_string();
    assert!(error.contains("corrupt") && error.contains("baselines.json"), "{error}");
    fs::write(&path, br#"{"format":"stormwatch.baselines","version":0}"#).unwrap();
    let error = load_snapshot(dir.path(), 10).unwrap_err().to_string();
    assert!(error.contains("version 0") && error.contains("move the file away"), "{error}");
    fs::write(&path, br#"{"format":"something-else","version":1}"#).unwrap();
    assert!(matches!(load_snapshot(dir.path(), 10), Err(SnapshotError::Corrupt { .. })));
}

//! The baseline snapshot: `models/baselines.json`, a versioned JSON document written
//! atomically (temporary file, fsync, rename) and restored on start.
//!
//! A missing file means "nothing learned yet". A file that cannot be read, is not a snapshot,
//! or has another version is an error that names the file and what to do: the engine must
//! never silently start from zero after it had learned.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use stormwatch_model::{clean_name, Dimension, Edge, Node, NodeKind, RootClass, Sym};

use crate::{
    BaselineStore, ClassScope, Distribution, EdgeScope, RequestMetric, SubspaceModel, WindowMetric, LATEST_UNIX_NANO,
};

mod doc;

use doc::*;

/// The snapshot's file name in the models directory.
pub const SNAPSHOT_FILE: &str = "baselines.json";
/// The snapshot document's `format` field.
pub const SNAPSHOT_FORMAT: &str = "stormwatch.baselines";
/// The snapshot format version this engine writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read.
    #[error("cannot read baseline snapshot {path}: {source}")]
    Read {
        /// The snapshot.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    #[error(
        "baseline snapshot {path} is corrupt ({reason}); restore it from a backup, or move it \
         away to start learning from zero"
    )]
    /// The file is not a snapshot this engine can read.
    Corrupt {
        /// The snapshot.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error(
        "baseline snapshot {path} has format version {found}, this engine reads version \
         {SNAPSHOT_VERSION}; run the stormwatch release that wrote it, or move the file away to \
         start learning from zero"
    )]
    /// The snapshot has another format version.
    Version {
        /// The snapshot.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The file could not be written.
    #[error("cannot write baseline snapshot {path}: {source}")]
    Write {
        /// The snapshot.
        path: PathBuf,
        /// The error writing it.
        source: std::io::Error,
    },
}

fn node_doc(node: &Node) -> NodeDoc {
    NodeDoc {
        service: node.service.to_string(),
        operation: node.operation.to_string(),
        kind: node.kind.as_str().into(),
    }
}

fn edge_doc(edge: &Edge) -> EdgeDoc {
    EdgeDoc { from: node_doc(&edge.from), to: node_doc(&edge.to) }
}

fn class_doc(class: &RootClass) -> ClassDoc {
    ClassDoc {
        service: class.service.to_string(),
        operation: class.operation.to_string(),
        query_shape: class.query_shape.map(|shape| shape.to_string()),
    }
}

/// A name from a snapshot, held to what ingest would have kept of it: escaped, and cut to
/// its dimension's length. Snapshots are written from such names; this keeps a hand-made or
/// older one from bringing in what ingest never would.
fn name(text: &str, dimension: Dimension) -> Sym {
    Sym::new(&clean_name(text, dimension.max_name_bytes()).0)
}

fn node_of(doc: &NodeDoc) -> Result<Node, String> {
    let kind = NodeKind::parse(&doc.kind).ok_or_else(|| format!("unknown node kind {:?}", doc.kind))?;
    let operations = match kind {
        NodeKind::Database | NodeKind::Cache => Dimension::Statement,
        _ => Dimension::Operation,
    };
    let services = if kind == NodeKind::Service { Dimension::Service } else { Dimension::Peer };
    Ok(Node { service: name(&doc.service, services), operation: name(&doc.operation, operations), kind })
}

fn edge_of(doc: &EdgeDoc) -> Result<Edge, String> {
    Ok(Edge { from: node_of(&doc.from)?, to: node_of(&doc.to)? })
}

fn class_of(doc: &ClassDoc) -> RootClass {
    RootClass {
        service: name(&doc.service, Dimension::Service),
        operation: name(&doc.operation, Dimension::Operation),
        query_shape: doc.query_shape.as_deref().map(|shape| name(shape, Dimension::QueryShape)),
    }
}

/// A distribution from a snapshot, if learning could have built it.
fn checked(distribution: Distribution, table: &str, index: usize) -> Result<Distribution, String> {
    distribution.check().map_err(|reason| format!("{table}[{index}]: {reason}"))?;
    Ok(distribution)
}

/// A table of the snapshot holds at most `max_keys` baselines, as the store does.
fn fits(table: &str, entries: usize, max_keys: usize) -> Result<(), String> {
    if entries > max_keys {
        return Err(format!(
            "{table} holds {entries} baselines, more than baseline.max_keys ({max_keys}); raise baseline.max_keys to \
             load it"
        ));
    }
    Ok(())
}

/// Creates `path` readable by its owner only (mode 0600): what the engine learned about the
/// system's traffic is not for every local user.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(file)
}

/// Writes `store` to `dir/baselines.json` atomically. Entries are sorted so that two
/// snapshots of the same state are byte-identical.
pub fn write_snapshot(dir: &Path, store: &BaselineStore) -> Result<PathBuf, SnapshotError> {
    write_snapshot_document(dir, &encode_snapshot(store))
}

/// Writes an encoded snapshot document ([`encode_snapshot`]) to `dir/baselines.json`
/// atomically: for callers that also send the same bytes elsewhere.
pub fn write_snapshot_document(dir: &Path, bytes: &[u8]) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(SNAPSHOT_FILE);
    let write_error = |source| SnapshotError::Write { path: path.clone(), source };
    fs::create_dir_all(dir).map_err(write_error)?;
    let temporary = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let file = create_private(&temporary).map_err(write_error)?;
    let mut writer = BufWriter::new(file);
    writer.write_all(bytes).map_err(write_error)?;
    writer.write_all(b"\n").map_err(write_error)?;
    let file = writer.into_inner().map_err(|e| write_error(e.into_error()))?;
    file.sync_all().map_err(write_error)?;
    fs::rename(&temporary, &path).map_err(write_error)?;
    // Make the rename itself durable.
    if let Ok(directory) = File::open(dir) {
        let _ = directory.sync_all();
    }
    Ok(path)
}

/// The entries of a table in key order (the same document for the same baselines).
fn sorted<K: Ord, V>(table: &super::store::Table<K, V>) -> Vec<(&K, &V)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// The snapshot document of `store` (what `baselines.json` holds, without the final newline):
/// also what engines share through Kafka.
pub fn encode_snapshot(store: &BaselineStore) -> Vec<u8> {
    let doc = SnapshotDoc {
        format: SNAPSHOT_FORMAT.into(),
        version: SNAPSHOT_VERSION,
        watermark_unix_nano: store.watermark_unix_nano,
        fanout: sorted(&store.fanout)
            .into_iter()
            .map(|(edge, d)| FanoutDoc { edge: edge_doc(edge), calls_per_parent: d.clone() })
            .collect(),
        request_edges: sorted(&store.request_edges)
            .into_iter()
            .map(|((class, edge), d)| RequestEdgeDoc {
                entry: class_doc(class),
                edge: edge_doc(edge),
                calls_per_request: d.clone(),
            })
            .collect(),
        request_work: sorted(&store.request_work)
            .into_iter()
            .map(|((class, edge), d)| RequestWorkDoc {
                entry: class_doc(class),
                edge: edge_doc(edge),
                work_micros_per_request: d.clone(),
            })
            .collect(),
        request_bytes: sorted(&store.request_bytes)
            .into_iter()
            .map(|((class, edge), d)| RequestBytesDoc {
                entry: class_doc(class),
                edge: edge_doc(edge),
                bytes_per_request: d.clone(),
            })
            .collect(),
        request_totals: sorted(&store.request_totals)
            .into_iter()
            .map(|((class, metric), d)| RequestTotalDoc {
                entry: class_doc(class),
                metric: metric.as_str().into(),
                per_request: d.clone(),
            })
            .collect(),
        class_scopes: sorted(&store.class_scopes).into_iter().map(|(key, d)| class_scope_doc(key, d)).collect(),
        edge_scopes: sorted(&store.edge_scopes).into_iter().map(|(scope, d)| edge_scope_doc(scope, d)).collect(),
        windows: sorted(&store.windows)
            .into_iter()
            .map(|((metric, edge), d)| WindowDoc {
                metric: metric.as_str().into(),
                edge: edge_doc(edge),
                thousandths: d.clone(),
            })
            .collect(),
        window_classes: sorted(&store.window_classes)
            .into_iter()
            .map(|((class, edge), d)| WindowClassDoc {
                entry: class_doc(class),
                edge: edge_doc(edge),
                per_thousand_entries: d.clone(),
            })
            .collect(),
        seasonal: sorted(&store.seasonal)
            .into_iter()
            .map(|((metric, edge), hours)| SeasonalDoc {
                metric: metric.as_str().into(),
                edge: edge_doc(edge),
                hours: hours.clone(),
            })
            .collect(),
        correlated: store.correlated.as_ref().map(correlated_doc),
    };
    serde_json::to_vec(&doc).expect("a snapshot always serialises")
}

fn class_scope_doc((scope, metric): &(ClassScope, RequestMetric), d: &Distribution) -> ClassScopeDoc {
    let (service, operation) = match scope {
        ClassScope::Route { service, operation } => (Some(service.to_string()), Some(operation.to_string())),
        ClassScope::Service(service) => (Some(service.to_string()), None),
        ClassScope::System => (None, None),
    };
    ClassScopeDoc {
        level: scope.level().into(),
        service,
        operation,
        metric: metric.as_str().into(),
        per_request: d.clone(),
    }
}

fn edge_scope_doc(scope: &EdgeScope, d: &Distribution) -> EdgeScopeDoc {
    EdgeScopeDoc {
        level: scope.level().into(),
        from: match scope {
            EdgeScope::ServicePair { from, .. } | EdgeScope::CallerToKind { from, .. } => from.to_string(),
        },
        to: match scope {
            EdgeScope::ServicePair { to, .. } => Some(to.to_string()),
            EdgeScope::CallerToKind { .. } => None,
        },
        kind: scope.kind().as_str().into(),
        calls_per_parent: d.clone(),
    }
}

fn correlated_doc(model: &SubspaceModel) -> CorrelatedDoc {
    CorrelatedDoc {
        edges: model.edges.iter().map(edge_doc).collect(),
        mean: model.mean.clone(),
        scale: model.scale.clone(),
        components: model.components.clone(),
        kept: model.kept,
        threshold: model.threshold,
        typical: model.typical,
        samples: model.samples,
        fitted_unix_nano: model.fitted_unix_nano,
    }
}

/// Reads `dir/baselines.json` into a store with `max_keys` per table. `Ok(None)` when there
/// is no snapshot yet.
pub fn load_snapshot(dir: &Path, max_keys: usize) -> Result<Option<BaselineStore>, SnapshotError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Read { path, source }),
    };
    decode_snapshot(&bytes, max_keys, &path).map(Some)
}

/// Reads a snapshot document (from a file, or from the engines' baselines topic: `origin`
/// names it in errors).
pub fn decode_snapshot(bytes: &[u8], max_keys: usize, origin: &Path) -> Result<BaselineStore, SnapshotError> {
    let path = origin.to_path_buf();
    let corrupt = |reason: String| SnapshotError::Corrupt { path: path.clone(), reason };
    let header: Header = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if header.format != SNAPSHOT_FORMAT {
        return Err(corrupt(format!("format is {:?}, expected {SNAPSHOT_FORMAT:?}", header.format)));
    }
    if header.version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version { path, found: header.version });
    }
    let doc: SnapshotDoc = serde_json::from_reader(BufReader::new(bytes)).map_err(|e| corrupt(e.to_string()))?;
    if doc.watermark_unix_nano > LATEST_UNIX_NANO {
        return Err(corrupt(format!("watermark_unix_nano {} is after the year 2200", doc.watermark_unix_nano)));
    }
    for (table, entries) in [
        ("fanout", doc.fanout.len()),
        ("request_edges", doc.request_edges.len()),
        ("request_totals", doc.request_totals.len()),
        ("class_scopes", doc.class_scopes.len()),
        ("edge_scopes", doc.edge_scopes.len()),
        ("windows", doc.windows.len()),
        ("window_classes", doc.window_classes.len()),
        ("seasonal", doc.seasonal.len()),
        ("request_work", doc.request_work.len()),
        ("request_bytes", doc.request_bytes.len()),
    ] {
        fits(table, entries, max_keys).map_err(corrupt)?;
    }
    let mut store = BaselineStore::new(max_keys);
    store.watermark_unix_nano = doc.watermark_unix_nano;
    for (i, entry) in doc.fanout.into_iter().enumerate() {
        let distribution = checked(entry.calls_per_parent, "fanout", i).map_err(corrupt)?;
        store.fanout.insert(edge_of(&entry.edge).map_err(corrupt)?, distribution);
    }
    for (i, entry) in doc.request_edges.into_iter().enumerate() {
        let key = (class_of(&entry.entry), edge_of(&entry.edge).map_err(corrupt)?);
        store.request_edges.insert(key, checked(entry.calls_per_request, "request_edges", i).map_err(corrupt)?);
    }
    for (i, entry) in doc.request_work.into_iter().enumerate() {
        let key = (class_of(&entry.entry), edge_of(&entry.edge).map_err(corrupt)?);
        store.request_work.insert(key, checked(entry.work_micros_per_request, "request_work", i).map_err(corrupt)?);
    }
    for (i, entry) in doc.request_bytes.into_iter().enumerate() {
        let key = (class_of(&entry.entry), edge_of(&entry.edge).map_err(corrupt)?);
        store.request_bytes.insert(key, checked(entry.bytes_per_request, "request_bytes", i).map_err(corrupt)?);
    }
    for (i, entry) in doc.request_totals.into_iter().enumerate() {
        let metric =
            RequestMetric::parse(&entry.metric).ok_or_else(|| corrupt(format!("unknown metric {:?}", entry.metric)))?;
        let distribution = checked(entry.per_request, "request_totals", i).map_err(corrupt)?;
        store.request_totals.insert((class_of(&entry.entry), metric), distribution);
    }
    for (i, entry) in doc.class_scopes.into_iter().enumerate() {
        let (key, distribution) = class_scope_of(i, entry).map_err(corrupt)?;
        store.class_scopes.insert(key, distribution);
    }
    for (i, entry) in doc.edge_scopes.into_iter().enumerate() {
        let (scope, distribution) = edge_scope_of(i, entry).map_err(corrupt)?;
        store.edge_scopes.insert(scope, distribution);
    }
    for (i, entry) in doc.windows.into_iter().enumerate() {
        let metric = WindowMetric::parse(&entry.metric)
            .ok_or_else(|| corrupt(format!("unknown window metric {:?}", entry.metric)))?;
        let distribution = checked(entry.thousandths, "windows", i).map_err(corrupt)?;
        store.windows.insert((metric, edge_of(&entry.edge).map_err(corrupt)?), distribution);
    }
    for (i, entry) in doc.window_classes.into_iter().enumerate() {
        let key = (class_of(&entry.entry), edge_of(&entry.edge).map_err(corrupt)?);
        let distribution = checked(entry.per_thousand_entries, "window_classes", i).map_err(corrupt)?;
        store.window_classes.insert(key, distribution);
    }
    for (i, entry) in doc.seasonal.into_iter().enumerate() {
        let metric = WindowMetric::parse(&entry.metric)
            .ok_or_else(|| corrupt(format!("unknown window metric {:?}", entry.metric)))?;
        entry.hours.check().map_err(|reason| corrupt(format!("seasonal[{i}]: {reason}")))?;
        store.seasonal.insert((metric, edge_of(&entry.edge).map_err(corrupt)?), entry.hours);
    }
    if let Some(doc) = doc.correlated {
        store.correlated = Some(correlated_of(doc).map_err(corrupt)?);
    }
    Ok(store)
}

/// A `class_scopes` entry, checked: the level agrees with the names given.
fn class_scope_of(i: usize, entry: ClassScopeDoc) -> Result<((ClassScope, RequestMetric), Distribution), String> {
    let metric = RequestMetric::parse(&entry.metric).ok_or_else(|| format!("unknown metric {:?}", entry.metric))?;
    let scope = match (entry.level.as_str(), &entry.service, &entry.operation) {
        ("route", Some(service), Some(operation)) => ClassScope::Route {
            service: name(service, Dimension::Service),
            operation: name(operation, Dimension::Operation),
        },
        ("service", Some(service), None) => ClassScope::Service(name(service, Dimension::Service)),
        ("system", None, None) => ClassScope::System,
        (level, _, _) => {
            return Err(format!(
                "class_scopes[{i}]: level {level:?} with that service and operation (route: both; service: a \
                 service; system: neither)"
            ))
        }
    };
    Ok(((scope, metric), checked(entry.per_request, "class_scopes", i)?))
}

/// An `edge_scopes` entry, checked: the level agrees with the callee given.
fn edge_scope_of(i: usize, entry: EdgeScopeDoc) -> Result<(EdgeScope, Distribution), String> {
    let kind =
        NodeKind::parse(&entry.kind).ok_or_else(|| format!("edge_scopes[{i}]: unknown node kind {:?}", entry.kind))?;
    let from = name(&entry.from, Dimension::Service);
    let callees = if kind == NodeKind::Service { Dimension::Service } else { Dimension::Peer };
    let scope = match (entry.level.as_str(), &entry.to) {
        ("pair", Some(to)) => EdgeScope::ServicePair { from, to: name(to, callees), kind },
        ("kind", None) => EdgeScope::CallerToKind { from, kind },
        (level, _) => {
            return Err(format!(
                "edge_scopes[{i}]: level {level:?} with that callee (pair: a callee service `to`; kind: none)"
            ))
        }
    };
    Ok((scope, checked(entry.calls_per_parent, "edge_scopes", i)?))
}

/// The correlated model, checked for consistent dimensions and numbers.
fn correlated_of(doc: CorrelatedDoc) -> Result<SubspaceModel, String> {
    let model = SubspaceModel {
        edges: doc.edges.iter().map(edge_of).collect::<Result<_, _>>()?,
        mean: doc.mean,
        scale: doc.scale,
        components: doc.components,
        kept: doc.kept,
        threshold: doc.threshold,
        typical: doc.typical,
        samples: doc.samples,
        fitted_unix_nano: doc.fitted_unix_nano,
    };
    if !model.is_consistent() || model.fitted_unix_nano > LATEST_UNIX_NANO {
        return Err("the correlated model's dimensions or numbers are inconsistent".into());
    }
    Ok(model)
}

#[cfg(test)]
mod tests;

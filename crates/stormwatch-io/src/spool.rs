//! The alert spool: alerts the sink could not deliver, on disk, oldest first, so the engine
//! keeps judging through a broker outage instead of stopping behind the alerts it holds, and
//! a restart (even `kill -9`) delivers them.
//!
//! One file per batch of alerts, `<sequence>.jsonl` (one alert a line), written to a
//! temporary name, synced and renamed, so a file either holds its whole batch or is not
//! there. The spool is bounded by `max_bytes`; once full, the sink stops taking alerts and
//! back-pressure reaches the inputs, as without a spool.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use stormwatch_model::Alert;

/// Batches of undelivered alerts in a directory.
#[derive(Debug)]
pub struct AlertSpool {
    dir: PathBuf,
    /// (sequence, alerts, bytes) of each file, oldest first.
    files: VecDeque<(u64, usize, u64)>,
    next: u64,
    bytes: u64,
    max_bytes: u64,
}

impl AlertSpool {
    /// Opens (creating) the spool in `dir`, with the batches a previous run left there.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<AlertSpool> {
        fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A batch whose write was cut off: it was never acknowledged as spooled.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(sequence) = name.strip_suffix(".jsonl").and_then(|s| s.parse::<u64>().ok()) else { continue };
            let bytes = entry.metadata()?.len();
            let alerts = fs::read_to_string(entry.path())?.lines().filter(|l| !l.trim().is_empty()).count();
            files.push((sequence, alerts, bytes));
        }
        files.sort_unstable();
        let next = files.last().map_or(0, |(sequence, _, _)| sequence + 1);
        let bytes = files.iter().map(|(_, _, bytes)| bytes).sum();
        Ok(AlertSpool { dir: dir.to_path_buf(), files: files.into(), next, bytes, max_bytes })
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether it holds no alerts.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// At its size limit: take no more.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    /// Alerts held.
    pub fn alerts(&self) -> usize {
        self.files.iter().map(|(_, alerts, _)| alerts).sum()
    }

    /// Bytes the spooled alerts take.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn path(&self, sequence: u64) -> PathBuf {
        self.dir.join(format!("{sequence:012}.jsonl"))
    }

    /// Appends a batch, durably: when this returns `Ok`, the batch survives a crash.
    pub fn push(&mut self, alerts: &[Alert]) -> io::Result<()> {
        let mut text = Vec::new();
        for alert in alerts {
            serde_json::to_writer(&mut text, alert).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        let path = self.path(self.next);
        let temporary = path.with_extension("tmp");
        let mut file = crate::create_private_file(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.files.push_back((self.next, alerts.len(), text.len() as u64));
        self.bytes += text.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// The oldest batch. A file that does not parse is moved aside (`.corrupt`) and reported
    /// as an error once; the next call goes on with the batch after it.
    pub fn front(&mut self) -> io::Result<Option<Vec<Alert>>> {
        let Some((sequence, _, _)) = self.files.front().copied() else { return Ok(None) };
        let path = self.path(sequence);
        let text = fs::read_to_string(&path)?;
        let parsed: Result<Vec<Alert>, _> =
            text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str::<Alert>).collect();
        match parsed {
            Ok(alerts) => Ok(Some(alerts)),
            Err(error) => {
                let aside = path.with_extension("corrupt");
                fs::rename(&path, &aside)?;
                self.forget_front();
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("spooled alerts {} do not parse ({error}); moved to {}", path.display(), aside.display()),
                ))
            }
        }
    }

    /// Removes the oldest batch (delivered).
    pub fn pop(&mut self) -> io::Result<()> {
        let Some((sequence, _, _)) = self.files.front().copied() else { return Ok(()) };
        fs::remove_file(self.path(sequence))?;
        self.forget_front();
        Ok(())
    }

    fn forget_front(&mut self) {
        if let Some((_, _, bytes)) = self.files.pop_front() {
            self.bytes -= bytes;
        }
    }
}

/// An alert for tests: the first golden alert, with `id`.
#[cfg(test)]
pub(crate) fn test_alert(id: &str) -> Alert {
    // Read where the tests run: the golden files are the repository's, not this crate's.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/flask-amplified.alerts.jsonl");
    let golden = fs::read_to_string(path).unwrap();
    let text = golden.lines().next().unwrap();
    // Golden alerts leave out the wall time of detection.
    let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
    value["detected_at"] = "2026-11-29T00:00:00.000Z".into();
    value["id"] = id.into();
    serde_json::from_value(value).unwrap()
}

#[cfg(test)]
mod tests {
    use super::test_alert as alert;
    use super::*;

    #[test]
    fn batches_come_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());
        spool.push(&[alert("a"), alert("b")]).unwrap();
        spool.push(&[alert("c")]).unwrap();
        assert_eq!(spool.alerts(), 3);
        // A write cut off before its rename is not a batch.
        fs::write(dir.path().join("000000000009.tmp"), "{\"half").unwrap();
        drop(spool);

        let mut spool = AlertSpool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((spool.alerts(), spool.files.len()), (3, 2));
        let ids = |batch: Vec<Alert>| batch.into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(ids(spool.front().unwrap().unwrap()), ["a", "b"]);
        spool.pop().unwrap();
        spool.push(&[alert("d")]).unwrap();
        assert_eq!(ids(spool.front().unwrap().unwrap()), ["c"]);
        spool.pop().unwrap();
        assert_eq!(ids(spool.front().unwrap().unwrap()), ["d"]);
        spool.pop().unwrap();
        assert!(spool.is_empty() && spool.bytes() == 0);
        assert!(!dir.path().join("000000000009.tmp").exists());
    }

    #[test]
    fn a_full_spool_says_so_and_a_corrupt_batch_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = AlertSpool::open(dir.path(), 100).unwrap();
        spool.push(&[alert("a")]).unwrap();
        assert!(spool.is_full(), "one alert is more than 100 bytes");
        fs::write(dir.path().join("000000000000.jsonl"), "not json\n").unwrap();
        spool.push(&[alert("b")]).unwrap();
        let error = spool.front().unwrap_err();
        assert!(error.to_string().contains("do not parse"), "{error}");
        assert!(dir.path().join("000000000000.corrupt").exists());
        assert_eq!(spool.front().unwrap().unwrap()[0].id, "b");
    }
}

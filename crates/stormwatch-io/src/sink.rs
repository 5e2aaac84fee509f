//! Where alerts go: Kafka when brokers are configured, otherwise JSON lines on stdout and/or
//! appended to a file. Either way an alert counts as emitted only once it was written.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use stormwatch_model::Alert;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use crate::kafka::KafkaAlertSink;
use crate::{IoError, Metrics};

/// Where alerts go.
pub enum AlertSink {
    /// A Kafka topic.
    Kafka(KafkaAlertSink),
    /// JSON lines on stdout, to a file, or both.
    Lines {
        /// Write each alert to stdout.
        stdout: bool,
        /// Append each alert to this file.
        file: Option<(PathBuf, File)>,
    },
}

impl std::fmt::Debug for AlertSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSink").finish_non_exhaustive()
    }
}

impl AlertSink {
    /// JSON lines to stdout (when `stdout`) and appended to `path` (when given).
    pub async fn lines(stdout: bool, path: Option<&Path>) -> Result<AlertSink, IoError> {
        let file = match path {
            Some(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(|source| IoError::AlertFile { path: path.into(), source })?;
                }
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                // New files are the owner's only; an existing file keeps the mode it was given.
                #[cfg(unix)]
                options.mode(0o600);
                let file =
                    options.open(path).await.map_err(|source| IoError::AlertFile { path: path.into(), source })?;
                Some((path.to_path_buf(), file))
            }
            None => None,
        };
        Ok(AlertSink::Lines { stdout, file })
    }

    /// Human description for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            AlertSink::Kafka(kafka) => format!("Kafka topic {:?}", kafka.topic()),
            AlertSink::Lines { stdout, file } => {
                let mut parts = Vec::new();
                if *stdout {
                    parts.push("stdout".to_string());
                }
                if let Some((path, _)) = file {
                    parts.push(path.display().to_string());
                }
                if parts.is_empty() {
                    "nowhere (no sink configured)".into()
                } else {
                    parts.join(" and ")
                }
            }
        }
    }

    /// Writes alerts; on success counts them as emitted (failures are the caller's to count,
    /// once it stops retrying).
    pub async fn emit(&mut self, alerts: &[Alert], metrics: &Metrics) -> Result<(), IoError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let result = match self {
            AlertSink::Kafka(kafka) => kafka.send(alerts).await.map_err(IoError::from),
            AlertSink::Lines { stdout, file } => {
                let mut text = String::new();
                for alert in alerts {
                    text.push_str(&alert.to_json());
                    text.push('\n');
                }
                let mut result = Ok(());
                if *stdout {
                    let mut out = tokio::io::stdout();
                    result = async {
                        out.write_all(text.as_bytes()).await?;
                        out.flush().await
                    }
                    .await
                    .map_err(IoError::Stdout);
                }
                if let (Ok(()), Some((path, file))) = (&result, file) {
                    result = async {
                        file.write_all(text.as_bytes()).await?;
                        file.flush().await
                    }
                    .await
                    .map_err(|source| IoError::AlertFile { path: path.clone(), source });
                }
                result
            }
        };
        if result.is_ok() {
            for alert in alerts {
                metrics.alerts_emitted[alert.kind.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// After a failed delivery: a Kafka sink starts over with a new producer.
    pub fn renew(&mut self) {
        if let AlertSink::Kafka(kafka) = self {
            if let Err(error) = kafka.renew() {
                tracing::warn!(%error, "cannot create a new Kafka producer; retrying with the old one");
            }
        }
    }

    /// Flushes what is buffered, waiting at most `timeout` for the broker.
    pub async fn close(&mut self, timeout: Duration) {
        match self {
            AlertSink::Kafka(kafka) => tokio::task::block_in_place(|| kafka.flush(timeout)),
            AlertSink::Lines { file, .. } => {
                if let Some((_, file)) = file {
                    let _ = file.sync_all().await;
                }
            }
        }
    }
}

//! Recorded OTLP traces for `replay`:
//!
//! * OTLP/JSON lines — the OpenTelemetry Collector file exporter's format, one
//!   `ExportTraceServiceRequest` per line (`.jsonl`, `.json`);
//! * OTLP protobuf — one `ExportTraceServiceRequest` per file, or a stream of them each
//!   prefixed by its length as a 4-byte big-endian integer (the file exporter's `proto` format).
//!
//! Either may be gzip-compressed (detected by its magic bytes). The format is taken from the
//! extension, else sniffed from the first byte.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use stormwatch_otlp::Decoded;

/// Why a recorded OTLP file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error reading it.
        source: std::io::Error,
    },
    /// A line of a JSON-lines file is not an OTLP/JSON export request.
    #[error("{path}:{line}: {source} (each line must be one OTLP/JSON ExportTraceServiceRequest)")]
    JsonLine {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: u64,
        /// Why it is not.
        source: stormwatch_otlp::DecodeError,
    },
    /// A protobuf file is not OTLP export requests.
    #[error("{path}: {source} (expected OTLP protobuf: one ExportTraceServiceRequest, or length-prefixed ones)")]
    Protobuf {
        /// The file.
        path: PathBuf,
        /// Why it is not.
        source: stormwatch_otlp::DecodeError,
    },
}

/// How a recorded OTLP file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// One OTLP/JSON `ExportTraceServiceRequest` per line (`.jsonl`, `.json`).
    JsonLines,
    /// OTLP protobuf: one `ExportTraceServiceRequest`, or length-prefixed ones.
    Protobuf,
}

/// Counts bytes read from the underlying file, for progress.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Decoded requests from one file, in file order.
pub struct OtlpFileReader {
    path: PathBuf,
    size: u64,
    read: Arc<AtomicU64>,
    lines: Option<Box<dyn BufRead + Send>>,
    line_number: u64,
    /// Protobuf files are read whole; their requests are decoded once, when split.
    protobuf: Option<std::vec::IntoIter<Result<Decoded, FileError>>>,
    line: String,
}

impl std::fmt::Debug for OtlpFileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpFileReader").finish_non_exhaustive()
    }
}

fn format_from_name(path: &Path) -> Option<FileFormat> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".jsonl") || name.ends_with(".json") || name.ends_with(".ndjson") {
        Some(FileFormat::JsonLines)
    } else if name.ends_with(".pb") || name.ends_with(".binpb") || name.ends_with(".protobuf") {
        Some(FileFormat::Protobuf)
    } else {
        None
    }
}

/// Opens a recorded OTLP file.
pub fn open(path: &Path) -> Result<OtlpFileReader, FileError> {
    let read_error = |source| FileError::Read { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let read = Arc::new(AtomicU64::new(0));
    let mut buffered = BufReader::with_capacity(1 << 16, Counting { inner: file, read: read.clone() });
    let head = buffered.fill_buf().map_err(read_error)?;
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn BufRead + Send> = if gzip {
        Box::new(BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(buffered)))
    } else {
        Box::new(buffered)
    };
    let format = match format_from_name(path) {
        Some(format) => format,
        None => {
            let head = reader.fill_buf().map_err(read_error)?;
            match head.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') | None => FileFormat::JsonLines,
                Some(_) => FileFormat::Protobuf,
            }
        }
    };
    let mut file_reader = OtlpFileReader {
        path: path.to_path_buf(),
        size,
        read,
        lines: None,
        line_number: 0,
        protobuf: None,
        line: String::new(),
    };
    match format {
        FileFormat::JsonLines => file_reader.lines = Some(reader),
        FileFormat::Protobuf => {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).map_err(read_error)?;
            let decoded =
                decode_protobuf_file(&bytes).map_err(|source| FileError::Protobuf { path: path.to_path_buf(), source });
            file_reader.protobuf = Some(match decoded {
                Ok(requests) => requests.into_iter().map(Ok).collect::<Vec<_>>().into_iter(),
                Err(error) => vec![Err(error)].into_iter(),
            });
        }
    }
    Ok(file_reader)
}

/// The requests of a protobuf file: length-prefixed ones if the whole file splits and
/// decodes as such, else the file as one request. Each request is decoded once.
fn decode_protobuf_file(bytes: &[u8]) -> Result<Vec<Decoded>, stormwatch_otlp::DecodeError> {
    let mut framed = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > rest.len() - 4 {
            break;
        }
        match stormwatch_otlp::decode_protobuf(&rest[4..4 + len]) {
            Ok(decoded) => framed.push(decoded),
            Err(_) => break,
        }
        rest = &rest[4 + len..];
    }
    if rest.is_empty() && !framed.is_empty() {
        return Ok(framed);
    }
    Ok(vec![stormwatch_otlp::decode_protobuf(bytes)?])
}

impl OtlpFileReader {
    /// Size of the file on disk.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of the file read so far (compressed bytes for gzip files).
    pub fn position(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl Iterator for OtlpFileReader {
    type Item = Result<Decoded, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(requests) = &mut self.protobuf {
            return requests.next();
        }
        let lines = self.lines.as_mut()?;
        loop {
            self.line.clear();
            self.line_number += 1;
            match lines.read_line(&mut self.line) {
                Ok(0) => return None,
                Ok(_) if self.line.trim().is_empty() => continue,
                Ok(_) => {
                    return Some(stormwatch_otlp::decode_json(self.line.as_bytes()).map_err(|source| {
                        FileError::JsonLine { path: self.path.clone(), line: self.line_number, source }
                    }))
                }
                Err(source) => return Some(Err(FileError::Read { path: self.path.clone(), source })),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use prost::Message;
    use stormwatch_otlp::collector::ExportTraceServiceRequest;

    use super::*;

    const LINE: &str = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"a","startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;

    fn spans_in(path: &Path) -> usize {
        open(path).unwrap().map(|d| d.unwrap().spans.len()).sum()
    }

    #[test]
    fn json_lines_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("t.jsonl");
        std::fs::write(&plain, format!("{LINE}\n\n{LINE}\n")).unwrap();
        assert_eq!(spans_in(&plain), 2);
        let gz = dir.path().join("t.jsonl.gz");
        let mut encoder = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        writeln!(encoder, "{LINE}").unwrap();
        encoder.finish().unwrap();
        assert_eq!(spans_in(&gz), 1);
        // The repository's recorded fixture.
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/python-sdk-flask-sqlite.otlp.jsonl.gz");
        assert_eq!(spans_in(&fixture), 7209);
    }

    #[test]
    fn protobuf_single_and_length_prefixed() {
        let dir = tempfile::tempdir().unwrap();
        let message = sample_request().encode_to_vec();
        let single = dir.path().join("one.pb");
        std::fs::write(&single, &message).unwrap();
        assert_eq!(spans_in(&single), 1);
        let mut framed = Vec::new();
        for _ in 0..3 {
            framed.extend((message.len() as u32).to_be_bytes());
            framed.extend(&message);
        }
        let stream = dir.path().join("stream.binpb");
        std::fs::write(&stream, framed).unwrap();
        assert_eq!(spans_in(&stream), 3);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, format!("{LINE}\nnot json\n")).unwrap();
        let results: Vec<_> = open(&path).unwrap().collect();
        let error = results[1].as_ref().unwrap_err().to_string();
        assert!(error.contains("bad.jsonl:2"), "{error}");
        let corrupt = dir.path().join("corrupt.pb");
        std::fs::write(&corrupt, b"\x0a\xff\xff\xff\x0f truncated").unwrap();
        let results: Vec<_> = open(&corrupt).unwrap().collect();
        let error = results[0].as_ref().unwrap_err().to_string();
        assert!(error.contains("corrupt.pb") && error.contains("not a valid OTLP protobuf"), "{error}");
        let Err(missing) = open(&dir.path().join("missing.jsonl")) else { panic!("opened a missing file") };
        assert!(missing.to_string().contains("missing.jsonl"));
    }

    fn sample_request() -> ExportTraceServiceRequest {
        use stormwatch_otlp::trace::{ResourceSpans, ScopeSpans, Span};
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: "a".into(),
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

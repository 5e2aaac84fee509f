//! Request bodies, read under bounds a sender cannot push past.
//!
//! * **Size**: a body larger than its route's limit is refused as soon as its declared length
//!   or the bytes received say so, before more of it is read.
//! * **Memory**: the bodies being received by a listener share one budget of bytes
//!   ([`Intake`]); a request that would take it past the budget is refused as retryable (503 /
//!   `UNAVAILABLE`), before its bytes are kept. The budget is charged as bytes arrive (a
//!   declared length costs nothing until it is sent) and held until the request is answered, so
//!   what a decoder inflates from it ([`Lease::charge`]) counts too.
//! * **Time**: a body must arrive within `body_timeout` of its request's headers, and at
//!   `min_body_rate` bytes per second or more after a grace of [`RATE_GRACE`]: a half-sent,
//!   stalled or trickled body is refused (408) and its connection closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::Metrics;

/// The time a body has to start arriving before its rate is judged.
pub const RATE_GRACE: Duration = Duration::from_secs(5);

/// How request bodies of a listener (or several) are read: the budget of bytes being received,
/// and the time a body may take.
pub struct Intake {
    budget: u64,
    in_use: AtomicU64,
    body_timeout: Duration,
    min_rate: u64,
    metrics: Arc<Metrics>,
}

/// Why a body was not read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the route takes (413 / `OUT_OF_RANGE`).
    #[error("request body exceeds the {limit}-byte limit ({setting})")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
        /// The setting that sets it.
        setting: &'static str,
    },
    /// The listener's budget of bytes being received is spent (503 / `UNAVAILABLE`, retry).
    #[error(
        "stormwatch is receiving {budget} bytes of request bodies already (server.max_receiving_bytes); retry \
         with backoff (no data of this request was kept)"
    )]
    Busy {
        /// The budget, in bytes.
        budget: u64,
    },
    /// Too slow: not whole within the body timeout, or below the minimum rate (408).
    #[error(
        "request body too slow: it must arrive within {timeout:?} at {min_rate} bytes/s or more \
         (server.body_timeout, server.min_body_rate)"
    )]
    TooSlow {
        /// The time a body may take.
        timeout: Duration,
        /// The pace it must keep, in bytes per second.
        min_rate: u64,
    },
    /// The client broke off, or sent something that is not a body (400).
    #[error("request body could not be read: {0}")]
    Broken(String),
}

impl Intake {
    /// `budget` bytes of bodies at once; each must arrive within `body_timeout`, at `min_rate`
    /// bytes/s after [`RATE_GRACE`].
    pub fn new(budget: u64, body_timeout: Duration, min_rate: u64, metrics: Arc<Metrics>) -> Arc<Intake> {
        Arc::new(Intake { budget, in_use: AtomicU64::new(0), body_timeout, min_rate: min_rate.max(1), metrics })
    }

    /// A lease for one request: nothing charged yet.
    pub fn lease(self: &Arc<Intake>) -> Lease {
        Lease { intake: self.clone(), charged: AtomicU64::new(0) }
    }

    /// Bytes charged by requests being received or decoded now.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    fn try_charge(&self, bytes: u64) -> Result<(), BodyError> {
        let mut current = self.in_use.load(Ordering::Relaxed);
        loop {
            let next = current.saturating_add(bytes);
            if next > self.budget {
                return Err(BodyError::Busy { budget: self.budget });
            }
            match self.in_use.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    // Summed over every intake of the process.
                    self.metrics.receiving_bytes.fetch_add(bytes, Ordering::Relaxed);
                    return Ok(());
                }
                Err(seen) => current = seen,
            }
        }
    }

    fn release(&self, bytes: u64) {
        self.in_use.fetch_sub(bytes, Ordering::Relaxed);
        self.metrics.receiving_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The latest instant the body may still be arriving, given what arrived so far.
    fn deadline(&self, started: Instant, received: u64) -> Instant {
        let paced = RATE_GRACE + Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        started + paced.min(self.body_timeout)
    }

    /// Reads `body` whole (at most `limit` bytes, `setting` naming that limit in errors),
    /// charging it to the budget: the lease holds it until dropped.
    pub async fn read<B>(
        self: &Arc<Intake>,
        body: B,
        limit: usize,
        setting: &'static str,
    ) -> Result<(Bytes, Lease), BodyError>
    where
        B: axum::body::HttpBody<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let too_large = BodyError::TooLarge { limit, setting };
        if body.size_hint().lower() > limit as u64 {
            return Err(too_large);
        }
        let lease = self.lease();
        let started = Instant::now();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0u64;
        let mut body = std::pin::pin!(body);
        loop {
            let frame = match tokio::time::timeout_at(self.deadline(started, received), body.frame()).await {
                Err(_elapsed) => {
                    Metrics::add(&self.metrics.requests_body_timeout_total, 1);
                    return Err(BodyError::TooSlow { timeout: self.body_timeout, min_rate: self.min_rate });
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => return Err(BodyError::Broken(error.into().to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            received += data.len() as u64;
            if received > limit as u64 {
                return Err(too_large);
            }
            lease.charge(data.len() as u64).inspect_err(|_| Metrics::add(&self.metrics.requests_busy_total, 1))?;
            chunks.push(data);
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut whole = Vec::with_capacity(received as usize);
                for chunk in chunks {
                    whole.extend_from_slice(&chunk);
                }
                Bytes::from(whole)
            }
        };
        Ok((bytes, lease))
    }
}

/// One request's share of its listener's budget, given back when dropped (once the request is
/// answered).
pub struct Lease {
    intake: Arc<Intake>,
    charged: AtomicU64,
}

impl Lease {
    /// Charges `bytes` more (what a decoder inflates from the body): `Busy` when the budget
    /// cannot take them.
    pub fn charge(&self, bytes: u64) -> Result<(), BodyError> {
        self.intake.try_charge(bytes)?;
        self.charged.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("charged", &self.charged.load(Ordering::Relaxed)).finish()
    }
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").field("budget", &self.budget).field("in_use", &self.in_use()).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let charged = self.charged.load(Ordering::Relaxed);
        if charged > 0 {
            self.intake.release(charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::{Full, StreamBody};

    fn intake(budget: u64) -> Arc<Intake> {
        Intake::new(budget, Duration::from_secs(30), 1024, Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn bodies_are_charged_while_held_and_given_back() {
        let intake = intake(100);
        let (bytes, lease) = intake.read(Full::new(Bytes::from(vec![1u8; 60])), 1_000, "limit").await.unwrap();
        assert_eq!((bytes.len(), intake.in_use()), (60, 60));
        // A second body of 60 does not fit beside the first: refused, and charges nothing.
        let refused = intake.read(Full::new(Bytes::from(vec![1u8; 60])), 1_000, "limit").await.unwrap_err();
        assert_eq!(refused, BodyError::Busy { budget: 100 });
        assert_eq!(intake.in_use(), 60);
        // What a decoder inflates is charged to the same lease.
        assert!(lease.charge(30).is_ok());
        assert!(lease.charge(30).is_err());
        drop(lease);
        assert_eq!(intake.in_use(), 0);
        let too_large = intake.read(Full::new(Bytes::from(vec![1u8; 60])), 50, "server.max_message_bytes").await;
        assert_eq!(
            too_large.unwrap_err().to_string(),
            "request body exceeds the 50-byte limit (server.max_message_bytes)"
        );
        assert_eq!(intake.in_use(), 0);
    }

    /// A body that stalls, or trickles below the minimum rate, is refused on time (on tokio's
    /// paused clock: no real waiting).
    #[tokio::test(start_paused = true)]
    async fn stalled_and_trickled_bodies_are_refused_on_time() {
        let intake = intake(1 << 20);
        type Frame = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;
        // 4 KiB at once, then nothing: 5 s grace + 4 s at 1 KiB/s.
        let stalled = futures::stream::once(async {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![0u8; 4096])))
        })
        .chain(futures::stream::pending::<Frame>());
        let started = Instant::now();
        let error = intake.read(StreamBody::new(stalled), 1 << 20, "limit").await.unwrap_err();
        assert!(matches!(error, BodyError::TooSlow { .. }), "{error}");
        assert_eq!(started.elapsed().as_secs(), 9);
        // One byte a second is below 1 KiB/s: refused after the grace (and the few bytes' credit).
        let trickle = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"x"))), ()))
        });
        let started = Instant::now();
        let error = intake.read(StreamBody::new(trickle), 1 << 20, "limit").await.unwrap_err();
        assert!(matches!(error, BodyError::TooSlow { .. }), "{error}");
        assert_eq!(started.elapsed().as_secs(), 5);
        // Fast enough, however long in all, but never past the body timeout.
        let steady = futures::stream::unfold(0, |sent| async move {
            (sent < 200).then_some(())?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![0u8; 2048]))), sent + 1))
        });
        let started = Instant::now();
        let error = intake.read(StreamBody::new(steady), 1 << 20, "limit").await.unwrap_err();
        assert!(matches!(error, BodyError::TooSlow { .. }), "{error}");
        assert_eq!(started.elapsed().as_secs(), 30);
        assert_eq!(intake.in_use(), 0);
    }
}

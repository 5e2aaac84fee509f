//! A throttle for log lines that repeat: an outage or a flood must not flood the log.

/// Lets a repeated log line through at most once per period, saying how many it held back:
/// an outage or a flood does not flood the log.
#[derive(Debug)]
pub struct Throttled {
    period: std::time::Duration,
    /// Milliseconds since `epoch` of the last line let through, plus one (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
    held_back: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

impl Throttled {
    /// Lets one message through per `period`.
    pub fn new(period: std::time::Duration) -> Throttled {
        Throttled {
            period,
            last_ms: std::sync::atomic::AtomicU64::new(0),
            held_back: std::sync::atomic::AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be logged.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.period.as_millis() as u64;
        if due && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let throttled = super::Throttled::new(std::time::Duration::from_millis(200));
        assert_eq!(throttled.allow(), Some(0));
        assert_eq!((0..5).filter_map(|_| throttled.allow()).count(), 0);
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(throttled.allow(), Some(5));
    }
}

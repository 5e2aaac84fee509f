//! One call and the spans it makes: the caller's CLIENT or PRODUCER span, and for a service
//! the callee's SERVER span and what that operation calls in turn.

use super::*;

impl<'s> Generator<'s> {
    /// A CLIENT or PRODUCER span: to a service (which answers with its SERVER span under
    /// `span_id`) or to a virtual node (database, cache, queue).
    #[allow(clippy::too_many_arguments)]
    fn client_span(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        parent: [u8; 8],
        name: &str,
        kind: span::SpanKind,
        (start, end): (u64, u64),
        attributes: Vec<KeyValue>,
        failed: bool,
    ) -> Span {
        Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.to_vec(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            status: failed.then(|| Status { code: status::StatusCode::Error as i32, ..Default::default() }),
            flags: 0x100,
            ..Default::default()
        }
    }

    /// Adds a CLIENT or PRODUCER span from `service` to a virtual node (database, cache, queue).
    #[allow(clippy::too_many_arguments)]
    fn push_virtual(
        &mut self,
        build: &mut Build<'_>,
        service: &str,
        parent: [u8; 8],
        name: &str,
        kind: span::SpanKind,
        times: (u64, u64),
        attributes: Vec<KeyValue>,
    ) -> [u8; 8] {
        let span_id = self.new_span_id();
        let span = Self::client_span(build.trace_id, span_id, parent, name, kind, times, attributes, false);
        self.push(build, service, span);
        span_id
    }

    /// Performs one call from `service` under `parent`; returns when it ended.
    pub(super) fn perform(
        &mut self,
        build: &mut Build<'s>,
        service: &str,
        call: &'s Call,
        parent: [u8; 8],
        start: u64,
        depth: usize,
    ) -> u64 {
        if let Some(target) = &call.service {
            return self.call_service(build, service, call, target, parent, start, depth);
        }
        if let (Some(db), Some(statement)) = (&call.db, &call.statement) {
            return self.query_database(build, service, call, (db, statement), parent, start);
        }
        if let Some(cache) = &call.cache {
            return self.look_up_cache(build, service, call, cache, parent, start, depth);
        }
        if let Some(queue) = &call.queue {
            let (system, destination) = queue.split_once(':').unwrap_or((queue, queue));
            let end = start + 150_000;
            let attributes = vec![
                attribute("messaging.system", system),
                attribute("messaging.destination.name", destination),
                attribute("messaging.operation.type", "send"),
                attribute("server.address", format!("{system}.internal")),
            ];
            let name = format!("send {destination}");
            let producer =
                self.push_virtual(build, service, parent, &name, span::SpanKind::Producer, (start, end), attributes);
            if call.consumer.is_some() {
                build.sent.push(queue::Sent { call, producer, at: end });
            }
            return end + 10_000;
        }
        start
    }

    /// A call to a service, retried while it fails (up to `call.retries` times).
    #[allow(clippy::too_many_arguments)]
    fn call_service(
        &mut self,
        build: &mut Build<'s>,
        service: &str,
        call: &'s Call,
        target: &str,
        parent: [u8; 8],
        start: u64,
        depth: usize,
    ) -> u64 {
        let (callee, operation) = Scenario::split_target(target).unwrap_or((target, ""));
        let (method, route) = operation.split_once(' ').unwrap_or(("GET", operation));
        let mut cursor = start;
        for attempt in 0..=call.retries {
            let client_id = self.new_span_id();
            let (end, failed) =
                self.execute(build, callee, operation, Some(client_id), cursor + 20_000, depth + 1, None);
            let mut attributes = vec![
                attribute("http.request.method", method),
                attribute("server.address", callee),
                int_attribute("server.port", 8080),
                attribute("url.full", format!("http://{callee}:8080{}", route.replace("{id}", "17"))),
                attribute("network.protocol.version", "1.1"),
                int_attribute("http.response.status_code", if failed { 500 } else { 200 }),
            ];
            if attempt > 0 {
                attributes.push(int_attribute("http.request.resend_count", i64::from(attempt)));
            }
            let times = (cursor, end + 20_000);
            let span = Self::client_span(
                build.trace_id,
                client_id,
                parent,
                method,
                span::SpanKind::Client,
                times,
                attributes,
                failed,
            );
            self.push(build, service, span);
            cursor = end + 30_000;
            if !failed {
                break;
            }
        }
        cursor
    }

    /// A database query, with literals where the statement has placeholders (as
    /// unparameterised drivers send). It takes 0.3 ms and an exponential 0.4 ms on average;
    /// one query in 500 waits for a lock or a cold page, 2 to 12 ms more.
    fn query_database(
        &mut self,
        build: &mut Build<'s>,
        service: &str,
        call: &Call,
        (db, statement): (&str, &str),
        parent: [u8; 8],
        start: u64,
    ) -> u64 {
        let (system, namespace) = db.split_once(':').unwrap_or((db, ""));
        let mut text = String::with_capacity(statement.len() + 8);
        for piece in statement.split('?').enumerate() {
            if piece.0 > 0 {
                text.push_str(&self.rng.between(1, 100_000).to_string());
            }
            text.push_str(piece.1);
        }
        let operation = statement.split_whitespace().next().unwrap_or("QUERY").to_ascii_uppercase();
        let mut nanos = (300_000.0 + self.rng.exponential(400_000.0)) as u64;
        // Decided by a hash of the query's text and start, so the other draws (and every other
        // span) are those of a scenario without these waits.
        let wait = stormwatch_model::stable_hash(&[text.as_bytes(), &start.to_le_bytes()]);
        if wait.is_multiple_of(500) {
            nanos += 2_000_000 + (wait >> 16) % 10_000_000;
        }
        let nanos = self.changed_duration(build, call, db, start, nanos);
        let rows = self.returned_rows(build, call, wait);
        let end = start + nanos;
        let mut attributes = vec![
            attribute("db.system.name", system),
            attribute("db.namespace", namespace),
            attribute("db.operation.name", operation.as_str()),
            attribute("db.query.text", text),
            attribute("server.address", format!("{system}.internal")),
            int_attribute("server.port", 5432),
        ];
        if let Some(rows) = rows {
            attributes.push(int_attribute("db.response.returned_rows", rows as i64));
        }
        let name = format!("{operation} {namespace}");
        self.push_virtual(build, service, parent, &name, span::SpanKind::Client, (start, end), attributes);
        end + 10_000
    }

    /// The rows a database call returns: its `rows`, or an active exfiltration's on it. Drawn
    /// from `seed` (the query's hash), so every other draw is that of a scenario without rows.
    fn returned_rows(&self, build: &mut Build<'s>, call: &Call, seed: u64) -> Option<u64> {
        let mut rng = Rng::new(seed);
        let label = call.label();
        for (index, change, coin) in &build.active {
            let applies = change.kind == ChangeKind::Exfiltration
                && *coin
                && change.call.as_deref() == Some(label.as_str())
                && change.entry.as_deref().is_none_or(|entry| self.scenario.entries[build.entry_index].matches(entry));
            if let (true, Some(rows)) = (applies, &change.rows) {
                build.touched.push(*index);
                return Some(rows.sample(&mut rng));
            }
        }
        call.rows.as_ref().map(|rows| rows.sample(&mut rng))
    }

    /// A database call's duration under active scanning-query and slowdown changes.
    fn changed_duration(&mut self, build: &mut Build<'s>, call: &Call, db: &str, start: u64, nanos: u64) -> u64 {
        let label = call.label();
        let mut nanos = nanos;
        for (index, change, coin) in &build.active {
            match change.kind {
                ChangeKind::ScanningQuery
                    if *coin
                        && change.call.as_deref() == Some(label.as_str())
                        && change
                            .entry
                            .as_deref()
                            .is_none_or(|entry| self.scenario.entries[build.entry_index].matches(entry)) =>
                {
                    if let Some(duration) = &change.duration_ms {
                        nanos = duration.sample(&mut self.rng).saturating_mul(1_000_000);
                        build.touched.push(*index);
                    }
                }
                ChangeKind::Slowdown if change.db.as_deref() == Some(db) => {
                    let from = self.start_nanos + change.start.as_nanos() as u64;
                    let ramp = (change.end - change.start).as_nanos() as f64 / 4.0;
                    let progress = (start.saturating_sub(from) as f64 / ramp).min(1.0);
                    nanos = (nanos as f64 * (1.0 + (change.factor - 1.0) * progress)) as u64;
                    build.touched.push(*index);
                }
                _ => {}
            }
        }
        nanos
    }

    /// A cache lookup and, on a miss (more often under cache-bypass and correlated changes),
    /// the calls made instead.
    #[allow(clippy::too_many_arguments)]
    fn look_up_cache(
        &mut self,
        build: &mut Build<'s>,
        service: &str,
        call: &'s Call,
        cache: &str,
        parent: [u8; 8],
        start: u64,
        depth: usize,
    ) -> u64 {
        let mut miss_ratio = call.miss_ratio;
        let label = call.label();
        for (index, change, coin) in &build.active {
            if change.kind == ChangeKind::CacheBypass && change.call.as_deref() == Some(label.as_str()) {
                miss_ratio = change.probability;
                build.touched.push(*index);
            }
            if change.kind == ChangeKind::CorrelatedShift && *coin && change.calls.contains(&label) {
                miss_ratio = (miss_ratio * change.factor).min(1.0);
                build.touched.push(*index);
            }
        }
        let end = start + (80_000.0 + self.rng.exponential(100_000.0)) as u64;
        let attributes = vec![
            attribute("db.system.name", cache),
            attribute("db.operation.name", "GET"),
            attribute("server.address", format!("{cache}.internal")),
            int_attribute("server.port", 6379),
        ];
        self.push_virtual(build, service, parent, "GET", span::SpanKind::Client, (start, end), attributes);
        let mut cursor = end + 10_000;
        if self.rng.chance(miss_ratio) {
            for nested in &call.on_miss {
                let count = self.count_of(build, nested);
                for _ in 0..count {
                    cursor = self.perform(build, service, nested, parent, cursor, depth);
                }
            }
        }
        cursor
    }
}

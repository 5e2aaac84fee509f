//! Validation of a parsed scenario: every name it uses exists, every change has the fields its
//! kind needs, every number is in range. Errors name the field and what to do.

use super::{collect_labels, Call, Change, ChangeKind, Scenario};

impl Scenario {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.rate.is_nan() || self.rate <= 0.0 {
            return Err(format!("rate: must be positive, got {}", self.rate));
        }
        if self.duration.is_zero() {
            return Err("duration: must be longer than zero".into());
        }
        if let Some(p) = self.sampling.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(format!("sampling: must be a probability in (0, 1], got {p}"));
        }
        if self.entries.is_empty() {
            return Err("entries: at least one entry is needed".into());
        }
        for (i, entry) in self.entries.iter().enumerate() {
            if self.operation(&entry.service, &entry.operation).is_none() {
                return Err(format!(
                    "entries[{i}]: {} {:?} is not an operation under [services]",
                    entry.service, entry.operation
                ));
            }
            if entry.weight.is_nan() || entry.weight < 0.0 {
                return Err(format!("entries[{i}].weight: must be zero or more"));
            }
        }
        for (service, operations) in &self.services {
            for (name, operation) in operations {
                for call in &operation.calls {
                    self.validate_call(call, &format!("services.{service}.{name:?}"))?;
                }
            }
        }
        for change in &self.changes {
            self.validate_change(change)?;
        }
        Ok(())
    }

    fn validate_change(&self, change: &Change) -> Result<(), String> {
        let at = format!("changes[{:?}]", change.name);
        if change.end <= change.start {
            return Err(format!("{at}: end must be after start"));
        }
        if change.end > self.duration {
            return Err(format!("{at}: ends after the scenario's duration"));
        }
        self.validate_change_fields(change, &at)?;
        if let Some(entry) = &change.entry {
            let known = self.entries.iter().any(|e| e.matches(entry));
            if !known {
                return Err(format!("{at}.entry: {entry:?} is not one of the entries"));
            }
        }
        if let Some(operation) = &change.operation {
            let known = Scenario::split_target(operation).and_then(|(s, o)| self.operation(s, o)).is_some();
            if !known {
                return Err(format!("{at}.operation: {operation:?} is not an operation under [services]"));
            }
        }
        if change.kind.is_attack() && change.detect_as.is_empty() {
            return Err(format!("{at}: an attack needs `detect_as` (the alert kinds that catch it)"));
        }
        Ok(())
    }

    /// The fields a change of its kind needs.
    fn validate_change_fields(&self, change: &Change, at: &str) -> Result<(), String> {
        let needs = |field: &str, present: bool| {
            if present {
                Ok(())
            } else {
                Err(format!("{at}: a {} change needs `{field}`", change.kind.as_str()))
            }
        };
        match change.kind {
            ChangeKind::FanoutAmplification | ChangeKind::NPlusOne => {
                needs("call", change.call.is_some())?;
                needs("count", change.count.is_some())?;
            }
            ChangeKind::RetryStorm => needs("operation", change.operation.is_some())?,
            ChangeKind::ScanningQuery | ChangeKind::ConsumerLag => {
                needs("call", change.call.is_some())?;
                needs("duration_ms", change.duration_ms.is_some())?;
            }
            ChangeKind::Exfiltration if change.rows.is_some() => needs("call", change.call.is_some())?,
            ChangeKind::Exfiltration => {
                needs("operation", change.operation.is_some())?;
                needs("response_bytes (or rows with call)", change.response_bytes.is_some())?;
            }
            ChangeKind::Slowdown => {
                needs("db", change.db.is_some())?;
                if !(change.factor >= 1.0 && change.factor.is_finite()) {
                    return Err(format!("{at}.factor: a slowdown is 1 or more, not {}", change.factor));
                }
            }
            ChangeKind::CacheBypass => needs("call", change.call.is_some())?,
            ChangeKind::MixShift | ChangeKind::NewEntry => needs("entry", change.entry.is_some())?,
            ChangeKind::CorrelatedShift => {
                needs("calls", !change.calls.is_empty())?;
                let mut labels = Vec::new();
                for operations in self.services.values() {
                    for operation in operations.values() {
                        collect_labels(&operation.calls, &mut labels);
                    }
                }
                if let Some(unknown) = change.calls.iter().find(|call| !labels.contains(call)) {
                    return Err(format!("{at}.calls: no call is labelled {unknown:?} under [services]"));
                }
                if !(change.factor > 0.0 && change.factor.is_finite()) {
                    return Err(format!("{at}.factor: must be a positive number, not {}", change.factor));
                }
            }
            ChangeKind::NewCall => {
                needs("operation", change.operation.is_some())?;
                needs("add", change.add.is_some())?;
            }
            ChangeKind::FlashCrowd | ChangeKind::Diurnal => {}
        }
        Ok(())
    }

    fn validate_call(&self, call: &Call, at: &str) -> Result<(), String> {
        let targets = [call.service.is_some(), call.db.is_some(), call.cache.is_some(), call.queue.is_some()];
        if targets.iter().filter(|t| **t).count() != 1 {
            return Err(format!("{at}: each call needs exactly one of service, db, cache, queue"));
        }
        if let Some(target) = &call.service {
            let known = Scenario::split_target(target).and_then(|(s, o)| self.operation(s, o)).is_some();
            if !known {
                return Err(format!("{at}: call to {target:?}: no such operation under [services]"));
            }
        }
        if let Some(consumer) = &call.consumer {
            let known = Scenario::split_target(consumer).and_then(|(s, o)| self.operation(s, o)).is_some();
            if call.queue.is_none() || !known {
                return Err(format!(
                    "{at}: consumer {consumer:?} needs a queue call and an operation under [services] to run"
                ));
            }
        }
        if call.db.is_some() && call.statement.is_none() {
            return Err(format!("{at}: a db call needs a statement"));
        }
        for nested in &call.on_miss {
            self.validate_call(nested, at)?;
        }
        Ok(())
    }
}

//! The statement normaliser and the query-shape extractor take any text: no panic, and
//! normalising is idempotent (a normalised statement is its own normal form).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let normal = stormwatch_otlp::normalize_statement(&text);
    assert_eq!(stormwatch_otlp::normalize_statement(&normal), normal, "not idempotent on {text:?}");
    let _ = stormwatch_otlp::query_shape(&text);
});

//! Any byte string is either rejected by the OTLP/JSON decoder with an error, or decoded into
//! spans that the engine takes without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormwatch_fuzz::through_the_engine;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = stormwatch_otlp::decode_json(data) {
        through_the_engine(decoded);
    }
});

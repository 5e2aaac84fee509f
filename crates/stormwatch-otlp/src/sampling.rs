//! Probability sampling from a span's W3C `tracestate`: how many spans one sampled span stands
//! for (its *adjusted count*), so that window-level counts of sampled traffic estimate the whole.
//!
//! OpenTelemetry's consistent probability sampling writes the rejection threshold into the `ot`
//! member: `ot=th:<hex>`, 1 to 14 hex digits of a 56-bit threshold `T`, padded with trailing
//! zeros. A span is kept when the trace's 56-bit randomness is at least `T`, so the sampling
//! probability is `(2^56 - T) / 2^56` and the adjusted count its reciprocal (`th:0` keeps every
//! span: 1; `th:8`: 2; `th:e668`: about 10). The older draft wrote `ot=p:<n>`, probability
//! `2^-n` (`p:63` meaning nothing is sampled). A span without either stands for itself.
//!
//! Everything is bounded by the `tracestate` length limit the W3C specification sets (512
//! bytes): longer values are not read.

/// Longest `tracestate` read (the W3C Trace Context limit).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// 2^56: the thresholds' range.
const RANGE: f64 = 72_057_594_037_927_936.0;

/// The rejection threshold of a sampler that keeps `probability` of the traces: 2^56 minus the
/// kept share (10% is exactly `e6666666666666`), below 2^56 so something is always kept.
pub fn threshold(probability: f64) -> u64 {
    let kept = (probability.clamp(0.0, 1.0) * RANGE).round() as u64;
    (1u64 << 56).saturating_sub(kept.max(1))
}

/// Whether a trace is kept at `threshold`: its randomness (the last 56 bits of its id, as
/// W3C Trace Context level 2 makes them random) reaches the threshold.
pub fn keeps(threshold: u64, trace_id: &[u8; 16]) -> bool {
    let mut randomness = [0u8; 8];
    randomness[1..].copy_from_slice(&trace_id[9..]);
    u64::from_be_bytes(randomness) >= threshold
}

/// The `tracestate` a span kept at `threshold` carries: `ot=th:` with 14 hex digits, trailing
/// zeros dropped (`th:0` keeps everything).
pub fn tracestate(threshold: u64) -> String {
    let digits = format!("{threshold:014x}");
    let trimmed = digits.trim_end_matches('0');
    format!("ot=th:{}", if trimmed.is_empty() { "0" } else { trimmed })
}

/// The adjusted count a `tracestate` gives its span: 1 when it carries no usable sampling
/// threshold (absent, malformed, or a probability of zero).
pub fn adjusted_count(tracestate: &str) -> f32 {
    if tracestate.is_empty() || tracestate.len() > MAX_TRACESTATE_BYTES {
        return 1.0;
    }
    let Some(ot) = tracestate
        .split(',')
        .filter_map(|member| member.trim().split_once('='))
        .find_map(|(key, value)| (key == "ot").then_some(value))
    else {
        return 1.0;
    };
    let mut count = None;
    for (key, value) in ot.split(';').filter_map(|entry| entry.split_once(':')) {
        match key {
            "th" => return count_of_threshold(value).unwrap_or(1.0),
            "p" => count = p_value(value),
            _ => {}
        }
    }
    count.unwrap_or(1.0)
}

/// `th:<hex>`: 1 to 14 lower-case hex digits, padded with trailing zeros to 56 bits.
fn count_of_threshold(hex: &str) -> Option<f32> {
    if hex.is_empty() || hex.len() > 14 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let value = u64::from_str_radix(hex, 16).ok()? << (4 * (14 - hex.len()));
    Some((RANGE / (RANGE - value as f64)) as f32)
}

/// `p:<n>`, n in 0..=62: probability 2^-n (63 samples nothing and adjusts nothing).
fn p_value(text: &str) -> Option<f32> {
    let n: u32 = text.parse().ok()?;
    (n <= 62).then(|| 2f32.powi(n as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_give_the_reciprocal_of_the_probability() {
        assert_eq!(adjusted_count("ot=th:0"), 1.0);
        assert_eq!(adjusted_count("ot=th:8"), 2.0);
        assert_eq!(adjusted_count("ot=th:c"), 4.0);
        // 10% as the SDKs write it (4 digits of precision), and 1%.
        assert!((adjusted_count("ot=th:e668") - 10.0).abs() < 0.01, "{}", adjusted_count("ot=th:e668"));
        assert!((adjusted_count("ot=th:fd70a4") - 100.0).abs() < 0.01);
        // Among other members and other ot keys, with optional whitespace.
        assert_eq!(adjusted_count("vendor=abc, ot=rv:0123456789abcd;th:8 ,other=x"), 2.0);
    }

    #[test]
    fn what_a_sampler_writes_reads_back_as_its_adjusted_count() {
        assert_eq!(tracestate(threshold(0.1)), "ot=th:e6666666666666");
        assert_eq!(tracestate(threshold(1.0)), "ot=th:0");
        for (probability, count) in [(1.0, 1.0), (0.5, 2.0), (0.25, 4.0), (0.1, 10.0), (0.02, 50.0)] {
            let read = adjusted_count(&tracestate(threshold(probability)));
            assert!((read - count).abs() < 1e-3, "{probability}: {read}");
        }
        // Kept when the last 56 bits reach the threshold; the first 9 bytes do not matter.
        let mut id = [0xff; 16];
        id[9..].copy_from_slice(&[0xe6, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66]);
        assert!(keeps(threshold(0.1), &id));
        id[15] = 0x65;
        assert!(!keeps(threshold(0.1), &id));
    }

    #[test]
    fn the_older_p_values_are_read() {
        assert_eq!(adjusted_count("ot=p:3"), 8.0);
        assert_eq!(adjusted_count("ot=p:0;r:62"), 1.0);
        assert_eq!(adjusted_count("ot=p:63"), 1.0);
        // th wins over p.
        assert_eq!(adjusted_count("ot=p:3;th:8"), 2.0);
    }

    #[test]
    fn anything_else_stands_for_itself() {
        for text in
            ["", "ot=th:", "ot=th:G", "ot=th:123456789abcdef", "ot=th:E668", "ot=p:x", "rojo=00f067aa0ba902b7", "ot"]
        {
            assert_eq!(adjusted_count(text), 1.0, "{text:?}");
        }
        let long = format!("ot=th:8,{}", "a=b,".repeat(200));
        assert_eq!(adjusted_count(&long), 1.0, "past the W3C limit nothing is read");
    }
}

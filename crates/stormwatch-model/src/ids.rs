//! Trace and span ids as newtypes with hex formatting, never raw byte vectors.

use std::fmt;
use std::str::FromStr;

/// Why bytes or text could not become an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The id had the wrong number of bytes (OTLP requires 16 for traces, 8 for spans).
    Length {
        /// Bytes an id of this kind has.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// The id was all zeroes, which OTLP defines as invalid.
    Zero,
    /// The text was not hexadecimal.
    NotHex,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Length { expected, found } => {
                write!(f, "expected {expected} bytes, found {found}")
            }
            IdError::Zero => f.write_str("all-zero id is invalid"),
            IdError::NotHex => f.write_str("not a hexadecimal string"),
        }
    }
}

impl std::error::Error for IdError {}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, byte) in bytes.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(byte >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(&buf[..bytes.len() * 2]).map_err(|_| fmt::Error)?)
}

fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N], IdError> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return Err(IdError::Length { expected: N, found: text.len() / 2 });
    }
    let digit = |c: u8| -> Result<u8, IdError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(IdError::NotHex),
        }
    };
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = (digit(text[2 * i])? << 4) | digit(text[2 * i + 1])?;
    }
    Ok(out)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Builds an id from OTLP bytes, rejecting wrong lengths and the all-zero id.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
                let array: [u8; $len] = bytes
                    .try_into()
                    .map_err(|_| IdError::Length { expected: $len, found: bytes.len() })?;
                if array == [0u8; $len] {
                    return Err(IdError::Zero);
                }
                Ok($name(array))
            }

            /// Parses the hex form used by OTLP/JSON and by tracing UIs.
            pub fn from_hex(text: &str) -> Result<Self, IdError> {
                let array = parse_hex::<$len>(text)?;
                if array == [0u8; $len] {
                    return Err(IdError::Zero);
                }
                Ok($name(array))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        /// As its hex form, the one tracing UIs show.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                $name::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                $name::from_hex(text)
            }
        }
    };
}

id_type!(
    /// A 16-byte W3C / OpenTelemetry trace id. `Display` is 32 lowercase hex chars.
    TraceId,
    16
);
id_type!(
    /// An 8-byte span id. `Display` is 16 lowercase hex chars.
    SpanId,
    8
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id: TraceId = "1c2ca6c082b7ae0492db56751295f562".parse().unwrap();
        assert_eq!(id.to_string(), "1c2ca6c082b7ae0492db56751295f562");
        assert_eq!("1C2CA6C082B7AE0492DB56751295F562".parse::<TraceId>().unwrap(), id);
        let span: SpanId = "07a2ebdb133821ea".parse().unwrap();
        assert_eq!(span.to_string(), "07a2ebdb133821ea");
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(TraceId::from_bytes(&[1; 8]), Err(IdError::Length { expected: 16, found: 8 }));
        assert_eq!(TraceId::from_bytes(&[0; 16]), Err(IdError::Zero));
        assert_eq!("zz".repeat(8).parse::<SpanId>(), Err(IdError::NotHex));
        assert!("abc".parse::<SpanId>().is_err());
    }
}

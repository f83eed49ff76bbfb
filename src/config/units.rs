//! Value types that appear throughout the configuration: durations and sizes.
//!
//! They parse from the human forms the contract fixes (`"250ms"`, `"2s"`) so that a bad value is
//! reported by serde at the value's own line and column.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as a string: `"250ms"`, `"2s"`, `"5m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ConfDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"250ms\", \"2s\" or \"5m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ConfDuration, E> {
                humantime::parse_duration(s.trim())
                    .map(ConfDuration)
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for ConfDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl Serialize for ConfTimeout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ConfDuration(self.0).serialize(s)
    }
}

/// A duration that must be above zero: timeouts and intervals, where zero would fail every
/// request or spin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfTimeout(pub Duration);

impl<'de> Deserialize<'de> for ConfTimeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ConfDuration(v) = ConfDuration::deserialize(d)?;
        if v.is_zero() {
            return Err(de::Error::custom("this duration must be above zero"));
        }
        Ok(ConfTimeout(v))
    }
}

/// A size in bytes: `"1MiB"`, `"16KiB"`, `"512B"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfSize(pub u64);

impl ConfSize {
    /// The size as a buffer length (saturating on 32-bit targets).
    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl<'de> Deserialize<'de> for ConfSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ConfSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"1MiB\", \"16KiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ConfSize, E> {
                Ok(ConfSize(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ConfSize, E> {
                u64::try_from(n)
                    .map(ConfSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ConfSize, E> {
                s.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| ConfSize(b.as_u64()))
                    .map_err(|e| E::custom(format!("invalid size {s:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ConfSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&bytesize::ByteSize(self.0).display().iec().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d: ConfDuration =
            toml::from_str::<std::collections::BTreeMap<String, ConfDuration>>("a = \"250ms\"")
                .unwrap()["a"];
        assert_eq!(d.0, Duration::from_millis(250));
        assert!(
            toml::from_str::<std::collections::BTreeMap<String, ConfDuration>>("a = \"fast\"")
                .is_err()
        );
    }

    #[test]
    fn sizes() {
        let sizes = |src: &str| {
            toml::from_str::<std::collections::BTreeMap<String, ConfSize>>(src).map(|m| m["a"].0)
        };
        assert_eq!(sizes("a = \"1MiB\"").unwrap(), 1 << 20);
        assert_eq!(sizes("a = \"16KiB\"").unwrap(), 16 << 10);
        assert_eq!(sizes("a = \"1kb\"").unwrap(), 1000);
        assert_eq!(sizes("a = 512").unwrap(), 512);
        assert!(sizes("a = \"big\"").is_err());
        assert!(sizes("a = -1").is_err());
    }
}

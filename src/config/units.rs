//! Value types that appear throughout the configuration: durations and sizes.
//!
//! They parse from the human forms the contract fixes (`"250ms"`, `"8KiB"`) so that a bad value is
//! reported by serde at the value's own line and column.

use serde::{de, Deserialize, Deserializer};
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

/// A byte size: an integer, or a string such as `"512"`, `"8KiB"`, `"10MiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfSize(pub u64);

impl ConfSize {
    fn parse(s: &str) -> Result<u64, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected a number followed by a unit"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" | "K" | "k" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" | "M" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" | "G" => 1 << 30,
            other => return Err(format!("invalid size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ConfSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ConfSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 1024, \"8KiB\" or \"10MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConfSize, E> {
                u64::try_from(v)
                    .map(ConfSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConfSize, E> {
                Ok(ConfSize(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ConfSize, E> {
                ConfSize::parse(s).map(ConfSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ConfSize::parse("8KiB"), Ok(8192));
        assert_eq!(ConfSize::parse("10MiB"), Ok(10 << 20));
        assert_eq!(ConfSize::parse("1024"), Ok(1024));
        assert_eq!(ConfSize::parse("2 KB"), Ok(2000));
        assert!(ConfSize::parse("ten").is_err());
        assert!(ConfSize::parse("5 parsecs").is_err());
        assert!(ConfSize::parse("99999999999999999999GiB").is_err());
    }

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
}

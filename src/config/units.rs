//! Value types that appear throughout the configuration: durations.
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
}

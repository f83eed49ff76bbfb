//! Secrets in the config: inline, `"env:NAME"` or `"file:/path"`, resolved at load.
//!
//! The value never appears in `Debug` output, logs or the admin API.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::cell::Cell;
use std::fmt;
use std::hash::Hasher;
use std::sync::OnceLock;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn resolve(spec: &str) -> Result<Secret, String> {
        let value = if let Some(name) = spec.strip_prefix("env:") {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
        } else if let Some(path) = spec.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {path}: {e}"))?
                .trim_end_matches(['\n', '\r'])
                .to_string()
        } else {
            spec.to_string()
        };
        if value.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Secret(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Secrets leave the process only as this placeholder (`GET /config`).
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if COMPARING.get() {
            return s.serialize_str(&digest(&self.0));
        }
        s.serialize_str("<redacted>")
    }
}

thread_local! {
    /// Set while [`comparable`] runs on this thread.
    static COMPARING: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with every secret, and every URL that may carry a password, serialized as a keyed
/// digest instead of its placeholder, so that two configurations differ where only a secret
/// does (reload diffs). The key is drawn once per process, so a digest means nothing outside
/// it; what `f` renders is for comparing, never for showing.
pub fn comparable<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            COMPARING.set(false);
        }
    }
    COMPARING.set(true);
    let _reset = Reset;
    f()
}

fn digest(value: &str) -> String {
    static KEY: OnceLock<[u8; 16]> = OnceLock::new();
    let mut h = siphasher::sip::SipHasher13::new_with_key(KEY.get_or_init(rand::random));
    h.write(value.as_bytes());
    format!("<digest {:016x}>", h.finish())
}

/// A URL as serialized: without its credentials, or its digest inside [`comparable`].
pub fn shown_url(url: &str) -> String {
    if COMPARING.get() {
        return digest(url);
    }
    redacted_url(url)
}

/// A URL without its credentials (`redis://***@host:port/0`): what logs and `GET /config`
/// show of an address that may carry a password.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// `serialize_with` for an optional URL setting: shown without its credentials.
pub fn serialize_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref().map(shown_url).serialize(s)
}

/// `serialize_with` for a list of URLs: shown without their credentials.
pub fn serialize_urls<S: Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| shown_url(u)))
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = String::deserialize(d)?;
        Secret::resolve(&spec).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(Secret::resolve("inline").unwrap().expose(), "inline");
        std::env::set_var("PYLON_TEST_SECRET", "from-env");
        assert_eq!(
            Secret::resolve("env:PYLON_TEST_SECRET").unwrap().expose(),
            "from-env"
        );
        assert!(Secret::resolve("env:PYLON_TEST_SECRET_MISSING").is_err());
        let path = std::env::temp_dir().join(format!("pylon-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let spec = format!("file:{}", path.display());
        assert_eq!(Secret::resolve(&spec).unwrap().expose(), "from-file");
        assert!(!format!("{:?}", Secret::resolve("hidden").unwrap()).contains("hidden"));
    }

    #[test]
    fn passwords_in_urls_are_not_shown() {
        assert_eq!(
            redacted_url("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redacted_url("redis://10.0.0.1:6379/0"),
            "redis://10.0.0.1:6379/0"
        );
    }
}

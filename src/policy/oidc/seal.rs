//! Session cookies: sealed with AES-256-GCM under a key from the policy's `cookie_secret`, so a
//! client can neither read nor change them, and split over several cookies when large.
//!
//! A sealed value is `base64url(nonce (12) ‖ ciphertext ‖ tag (16))`, with the cookie's base
//! name as associated data, so a value cannot be moved to another cookie. Browsers keep about
//! 4 KiB per cookie: a longer value goes in `NAME`, `NAME.1`, `NAME.2`, ... (at most
//! `MAX_PARTS`), and reading takes the parts in order until one is missing.

use base64::Engine;
use http::{HeaderMap, HeaderValue};
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use std::borrow::Cow;

/// The most of a sealed value one cookie carries.
const PART: usize = 3800;
/// The most cookies one session is split over.
const MAX_PARTS: usize = 8;

pub struct Sealer {
    key: [u8; 32],
}

impl Sealer {
    /// A sealer from 64 hex characters (32 random bytes).
    pub fn from_hex(secret: &str) -> Result<Sealer, String> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(secret.trim(), &mut key).map_err(|_| {
            "`cookie_secret` must be 64 hex characters (32 random bytes)".to_string()
        })?;
        Ok(Sealer { key })
    }

    pub fn seal(&self, name: &str, plain: &[u8]) -> Option<String> {
        let nonce: [u8; 12] = rand::random();
        let mut tag = [0u8; 16];
        let sealed = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            name.as_bytes(),
            plain,
            &mut tag,
        )
        .ok()?;
        let mut out = Vec::with_capacity(12 + sealed.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&tag);
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, name: &str, sealed: &str) -> Option<Vec<u8>> {
        let data = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        if data.len() < 28 {
            return None;
        }
        let (nonce, rest) = data.split_at(12);
        let (body, tag) = rest.split_at(rest.len() - 16);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(nonce),
            name.as_bytes(),
            body,
            tag,
        )
        .ok()
    }

    /// `Set-Cookie` values that store `plain` as cookie `name` (split when long) and clear
    /// the parts an earlier, longer value may have left (up to `MAX_PARTS`).
    pub fn cookies(&self, name: &str, plain: &[u8], attributes: &str) -> Option<Vec<HeaderValue>> {
        let sealed = self.seal(name, plain)?;
        let parts: Vec<&str> = sealed
            .as_bytes()
            .chunks(PART)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        if parts.len() > MAX_PARTS {
            return None;
        }
        let mut out = Vec::new();
        for i in 0..MAX_PARTS {
            let value = match parts.get(i) {
                Some(part) => format!("{}={part}; {attributes}", part_name(name, i)),
                None => format!("{}=; {attributes}; Max-Age=0", part_name(name, i)),
            };
            out.push(HeaderValue::from_str(&value).ok()?);
        }
        Some(out)
    }
}

/// The cookie names of a value's parts: `NAME`, then `NAME.1`, `NAME.2`, ...
pub fn part_names(name: &str) -> Box<[String]> {
    (0..MAX_PARTS).map(|i| part_name(name, i)).collect()
}

/// The sealed value of the cookie whose parts are named `parts`, its parts joined (borrowed
/// when there is one); `None` when absent.
pub fn sealed<'h>(headers: &'h HeaderMap, parts: &[String]) -> Option<Cow<'h, str>> {
    let part = |name: &str| {
        crate::headers::cookie(headers, name)
            .filter(|p| !p.is_empty())
            .and_then(|p| std::str::from_utf8(p).ok())
    };
    let first = part(parts.first()?)?;
    let Some(second) = parts.get(1).and_then(|n| part(n)) else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = format!("{first}{second}");
    for more in parts[2..].iter().map_while(|n| part(n)) {
        joined.push_str(more);
    }
    Some(Cow::Owned(joined))
}

/// The cookie name of part `i`.
fn part_name(name: &str, i: usize) -> String {
    match i {
        0 => name.to_string(),
        i => format!("{name}.{i}"),
    }
}

/// `Set-Cookie` values that clear cookie `name` and its parts.
pub fn clear(name: &str, attributes: &str) -> Vec<HeaderValue> {
    (0..MAX_PARTS)
        .filter_map(|i| {
            HeaderValue::from_str(&format!("{}=; {attributes}; Max-Age=0", part_name(name, i))).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn request_with(cookies: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<String> = cookies
            .iter()
            .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
            .filter(|p| !p.ends_with('='))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, pairs.join("; ").parse().unwrap());
        h
    }

    #[test]
    fn a_sealed_cookie_opens_only_unchanged_under_its_key_and_name() {
        let s = Sealer::from_hex(KEY).unwrap();
        let sealed = s.seal("sess", b"hello").unwrap();
        assert_eq!(s.open("sess", &sealed).unwrap(), b"hello");
        assert!(s.open("other", &sealed).is_none());
        let mut changed = sealed.into_bytes();
        let last = changed.len() - 3;
        changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
        assert!(s
            .open("sess", std::str::from_utf8(&changed).unwrap())
            .is_none());
        let other = Sealer::from_hex(&"ab".repeat(32)).unwrap();
        assert!(other.open("sess", &s.seal("sess", b"x").unwrap()).is_none());
        assert!(Sealer::from_hex("short").is_err());
    }

    fn read(s: &Sealer, headers: &HeaderMap) -> Option<Vec<u8>> {
        s.open("sess", &sealed(headers, &part_names("sess"))?)
    }

    #[test]
    fn a_large_value_is_split_over_cookies_and_read_back_whole() {
        let s = Sealer::from_hex(KEY).unwrap();
        let big: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        let set = s.cookies("sess", &big, "Path=/; HttpOnly").unwrap();
        let live = set
            .iter()
            .filter(|c| !c.to_str().unwrap().contains("Max-Age=0"))
            .count();
        assert!(live >= 3, "{live} parts");
        assert_eq!(read(&s, &request_with(&set)).unwrap(), big);
        let small = s.cookies("sess", b"small", "Path=/").unwrap();
        assert_eq!(read(&s, &request_with(&small)).unwrap(), b"small");
        assert!(read(&s, &HeaderMap::new()).is_none());
        assert_eq!(clear("sess", "Path=/").len(), MAX_PARTS);
    }
}

//! What a `consistent_hash` pool hashes: the client address, the path, a header or a cookie.

/// What a `consistent_hash` pool hashes to pick a target.
#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashOn {
    /// The key this request hashes to.
    pub fn key<'a>(
        &self,
        req: &'a pingora::http::RequestHeader,
        client_ip: std::net::IpAddr,
    ) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        match self {
            HashOn::ClientIp => Cow::Owned(match client_ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
            }),
            HashOn::Path => Cow::Borrowed(req.uri.path().as_bytes()),
            HashOn::Header(name) => {
                Cow::Borrowed(req.headers.get(name).map_or(&b""[..], |v| v.as_bytes()))
            }
            HashOn::Cookie(name) => {
                Cow::Borrowed(crate::headers::cookie(&req.headers, name).unwrap_or(b""))
            }
        }
    }

    pub fn parse(s: &str) -> Option<HashOn> {
        match s {
            "client_ip" => Some(HashOn::ClientIp),
            "path" => Some(HashOn::Path),
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .ok()
                        .map(HashOn::Header)
                } else if let Some(c) = s.strip_prefix("cookie:") {
                    (!c.is_empty()).then(|| HashOn::Cookie(c.to_string()))
                } else {
                    None
                }
            }
        }
    }
}

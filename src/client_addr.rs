//! Who sent a request: the client's address behind the proxies in `server.trusted_proxies`, and
//! addresses as text. Below the filters (whose context works the address out once) and the
//! plumbing (which sets `x-forwarded-for`).

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::net::IpAddr;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether `ip` is one of the trusted proxies, whose forwarding headers are believed.
pub fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// The address of the client: the peer itself, or, when the peer is a trusted proxy, the last
/// address in `x-forwarded-for` that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(list) = value.to_str() else {
            return client;
        };
        for hop in list.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !trusted(ip, proxies) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

/// An address as text. IPv4, the common case, is written octet by octet: `Display` goes
/// through the formatting machinery four times per request.
pub fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.99",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn client_ip_trusts_only_proxies() {
        let proxies = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            "1.1.1.1, 2.2.2.2, 10.0.0.5".parse().unwrap(),
        );
        let untrusted: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(untrusted, &h, &proxies), untrusted);
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &proxies),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
    }
}

//! Path normalization before routing, so that one resource has one spelling.
//!
//! Without it `/x/../admin`, `//admin` and `/%61dmin` would all name `/admin` to the upstream
//! while missing an `=/admin` route. The normalized path is what is routed and what is sent
//! upstream, as Envoy does with `normalize_path` and `merge_slashes`.

use std::borrow::Cow;

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decode percent-escapes of unreserved characters (other escapes are kept, upper-cased),
/// merge repeated slashes and resolve `.` and `..` segments (RFC 3986, 6.2.2).
/// Paths that need none of it are returned without allocating.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let b = path.as_bytes();
    let suspicious = b.contains(&b'%') || b.windows(2).any(|w| w == b"//" || w == b"/.");
    if !suspicious || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                let v = hi << 4 | lo;
                if unreserved(v) {
                    decoded.push(v as char);
                } else {
                    decoded.push('%');
                    decoded.push(b[i + 1].to_ascii_uppercase() as char);
                    decoded.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
            }
            (c, _, _) => {
                // A URI path is ASCII, so each byte is one character.
                decoded.push(c as char);
                i += 1;
            }
        }
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_path as n;

    #[test]
    fn plain_paths_are_untouched() {
        for p in ["/", "/api/orders", "/a/b/", "/file.txt", "/a.b/c", "*"] {
            assert!(matches!(n(p), std::borrow::Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn bypass_spellings_collapse() {
        assert_eq!(n("/x/../admin"), "/admin");
        assert_eq!(n("//admin"), "/admin");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/a/./b/"), "/a/b/");
        assert_eq!(n("/a/%2e%2E/admin"), "/admin");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/50%"), "/50%");
        assert_eq!(n("/%zz"), "/%zz");
    }
}

//! A listener's certificates, chosen by the server name a client asks for (SNI).
//!
//! Names are looked up in two hash maps built at load: exact names first, then the wildcard
//! for the name's parent (`*.example.com` covers `a.example.com`, not `a.b.example.com` nor
//! `example.com`, as RFC 6125 has it). A client that sends no name, or one no certificate is
//! for, gets the listener's default certificate.

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::collections::HashMap;
use std::sync::Arc;

/// One certificate chain and its private key.
pub struct Certified {
    /// The certificate first, then its intermediates.
    pub chain: Box<[X509]>,
    pub key: PKey<Private>,
}

/// Read a PEM file of one or more certificates.
pub fn read_chain(path: &str) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read certificate {path:?}: {e}"))?;
    let chain = X509::stack_from_pem(&pem)
        .map_err(|e| format!("certificate {path:?} is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate {path:?} is not valid PEM: no certificate in it"
        ));
    }
    Ok(chain)
}

impl Certified {
    /// Read a chain and its key from PEM files, and check that the key is the certificate's.
    /// An error names the file at fault and says which one it is (`Err((true, _))` for the key).
    pub fn load(cert: &str, key: &str) -> Result<Certified, (bool, String)> {
        let chain = read_chain(cert).map_err(|e| (false, e))?;
        let pem =
            std::fs::read(key).map_err(|e| (true, format!("cannot read key {key:?}: {e}")))?;
        let key_pair = PKey::private_key_from_pem(&pem).map_err(|e| {
            (
                true,
                format!("key {key:?} is not a valid PEM private key: {e}"),
            )
        })?;
        let public = chain[0]
            .public_key()
            .map_err(|e| (false, format!("certificate {cert:?}: {e}")))?;
        if !public.public_eq(&key_pair) {
            return Err((
                true,
                format!("key {key:?} does not belong to certificate {cert:?}"),
            ));
        }
        Ok(Certified {
            chain: chain.into(),
            key: key_pair,
        })
    }

    /// The names the certificate is for: its DNS subject alternative names, or else its
    /// common name.
    pub fn names(&self) -> Vec<String> {
        let leaf = &self.chain[0];
        let sans: Vec<String> = leaf
            .subject_alt_names()
            .into_iter()
            .flatten()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        if !sans.is_empty() {
            return sans;
        }
        leaf.subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .filter_map(|e| e.data().to_string().ok())
            .collect()
    }
}

/// A name as it is compared: lower case, without a trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is a server name a certificate can be chosen for: `*.` then a name with at
/// least one dot, or a name; letters, digits, `-` and `.` only.
pub fn valid_host(name: &str) -> bool {
    let (bare, wildcard) = match name.strip_prefix("*.") {
        Some(parent) => (parent, true),
        None => (name, false),
    };
    let labels_ok = bare.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    labels_ok && (!wildcard || bare.contains('.'))
}

/// The certificates of one listener, by server name.
pub struct Certificates {
    certs: Box<[Arc<Certified>]>,
    exact: HashMap<String, usize>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl Certificates {
    /// Certificates with the names each is for, in the listener's order (the first listed
    /// wins a name two share), and the index of the default one.
    pub fn new(list: Vec<(Certified, Vec<String>)>, default: usize) -> Certificates {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut certs = Vec::with_capacity(list.len());
        for (i, (cert, names)) in list.into_iter().enumerate() {
            for name in names {
                let name = normalize(&name);
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name).or_insert(i),
                };
            }
            certs.push(Arc::new(cert));
        }
        // The default was checked against the list when the listener was compiled.
        let default = default.min(certs.len().saturating_sub(1));
        Certificates {
            certs: certs.into(),
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for a client that asked for `name` (none: it sent no SNI).
    pub fn select(&self, name: Option<&str>) -> &Certified {
        let found = name.and_then(|name| {
            let name = normalize(name);
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        &self.certs[*found.unwrap_or(&self.default)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// A self-signed certificate whose common name tells which one was chosen.
    fn cert(cn: &str) -> Certified {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Certified {
            chain: vec![b.build()].into(),
            key,
        }
    }

    fn chosen(certs: &Certificates, name: Option<&str>) -> Vec<String> {
        certs.select(name).names()
    }

    #[test]
    fn exact_names_then_one_label_wildcards_then_the_default() {
        let certs = Certificates::new(
            vec![
                (cert("api"), vec!["api.example.com".into()]),
                (
                    cert("wild"),
                    vec!["*.example.com".into(), "Other.Test.".into()],
                ),
                // A name already taken stays with the first certificate.
                (cert("late"), vec!["api.example.com".into()]),
                (cert("default"), vec![]),
            ],
            3,
        );
        assert_eq!(chosen(&certs, Some("api.example.com")), ["api"]);
        assert_eq!(chosen(&certs, Some("API.example.com.")), ["api"]);
        assert_eq!(chosen(&certs, Some("www.example.com")), ["wild"]);
        assert_eq!(chosen(&certs, Some("other.test")), ["wild"]);
        assert_eq!(chosen(&certs, Some("a.www.example.com")), ["default"]);
        assert_eq!(chosen(&certs, Some("example.com")), ["default"]);
        assert_eq!(chosen(&certs, None), ["default"]);
    }

    #[test]
    fn server_names_are_checked() {
        for good in ["a.example.com", "*.example.com", "localhost", "x-1.test"] {
            assert!(valid_host(good), "{good}");
        }
        for bad in [
            "",
            "*.com",
            "*.*.example.com",
            "a..b",
            "a b.test",
            "a.*.test",
            "*",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}

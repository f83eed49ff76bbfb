//! TLS: listeners that pick a certificate by server name, verify client certificates, and
//! re-read both on reload; and the CA files upstream connections verify targets with.
//!
//! Pylon uses Pingora's `openssl` TLS. Pingora's certificate callback ([`accept`]) runs in the
//! middle of every handshake with the connection's `SSL` in hand, so each handshake can pick
//! its certificate by SNI from the configuration snapshot of that moment and set the client-CA
//! store and verify mode for its listener: a reload swaps certificates, keys and client CAs
//! without touching the listening socket or the connections already up. Pingora's `rustls`
//! listener in 0.9 takes one certificate at build time and no callback (its `TlsAccept` hook is
//! documented as openssl/boringssl only), so neither SNI selection nor a reload could be done
//! there without rebuilding the listener.
//!
//! What a listener fixes at start (its address, minimum version, ALPN) needs a restart or a
//! binary upgrade to change; everything in [`ListenerTls`] is rebuilt by each snapshot.

pub mod accept;
pub mod certs;

use crate::config::{ClientAuth, ConfigError, TlsListenerConfig};
use certs::{Certificates, Certified};
use openssl::nid::Nid;
use openssl::ssl::{SslRef, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509VerifyResult, X509};
use std::time::Duration;

/// One certificate a listener serves, and when it expires.
pub struct Expiry {
    /// What it is for: its first server name, else its file.
    pub name: String,
    pub file: String,
    /// Its `notAfter`, in seconds since the epoch.
    pub not_after: i64,
}

/// A certificate time in seconds since the epoch.
fn unix_time(time: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(time).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

/// What one TLS listener needs per handshake, compiled from its `[[server.tls]]` entry.
pub struct ListenerTls {
    pub certificates: Certificates,
    pub clients: Option<ClientCheck>,
    /// When each certificate expires, and how long before to warn (`cert_expiry.rs`).
    pub expiries: Box<[Expiry]>,
    pub warn_within: Duration,
}

/// How a listener verifies client certificates (mTLS).
pub struct ClientCheck {
    cas: Box<[X509]>,
    required: bool,
}

impl ClientCheck {
    /// Ask this connection's client for a certificate signed by one of the CAs (and, when
    /// required, refuse the handshake without one).
    fn apply(&self, ssl: &mut SslRef) -> Result<(), openssl::error::ErrorStack> {
        let mut store = X509StoreBuilder::new()?;
        for ca in self.cas.iter() {
            store.add_cert(ca.clone())?;
            ssl.add_client_ca(ca)?;
        }
        ssl.set_verify_cert_store(store.build())?;
        let mut mode = SslVerifyMode::PEER;
        if self.required {
            mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
        }
        ssl.set_verify(mode);
        Ok(())
    }
}

impl ListenerTls {
    /// Read and check a listener's certificates, keys and client CAs. Every problem is
    /// reported at the key that names the file, and names the file.
    pub fn compile(
        config: &TlsListenerConfig,
        warn_within: Duration,
    ) -> Result<ListenerTls, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut list = Vec::new();
        let mut expiries = Vec::new();
        for entry in config.certificates.get_ref() {
            for host in entry.hosts.iter().flatten() {
                if !certs::valid_host(host.get_ref()) {
                    errors.push(ConfigError::at(
                        host.span(),
                        format!(
                            "invalid server name {:?}: expected a name or *.name",
                            host.get_ref()
                        ),
                    ));
                }
            }
            let loaded = match Certified::load(entry.cert.get_ref(), entry.key.get_ref()) {
                Ok(c) => c,
                Err((key, message)) => {
                    let span = if key {
                        entry.key.span()
                    } else {
                        entry.cert.span()
                    };
                    errors.push(ConfigError::at(span, message));
                    continue;
                }
            };
            let names: Vec<String> = match &entry.hosts {
                Some(hosts) => hosts.iter().map(|h| h.get_ref().clone()).collect(),
                None => loaded.names(),
            };
            let file = entry.cert.get_ref().clone();
            if let Some(not_after) = unix_time(loaded.chain[0].not_after()) {
                expiries.push(Expiry {
                    name: names.first().cloned().unwrap_or_else(|| file.clone()),
                    file,
                    not_after,
                });
            }
            list.push((loaded, names));
        }
        let count = config.certificates.get_ref().len();
        if count == 0 {
            errors.push(ConfigError::at(
                config.certificates.span(),
                "a TLS listener needs at least one certificate",
            ));
        }
        let default = match &config.default_certificate {
            Some(d) if *d.get_ref() >= count => {
                errors.push(ConfigError::at(
                    d.span(),
                    format!(
                        "`default_certificate` is an index into `certificates` (0 to {})",
                        count.saturating_sub(1)
                    ),
                ));
                0
            }
            Some(d) => *d.get_ref(),
            None => 0,
        };
        let clients = match (&config.client_ca, &config.client_auth) {
            (Some(ca), auth) => match certs::read_chain(ca.get_ref()) {
                Ok(cas) => Some(ClientCheck {
                    cas: cas.into(),
                    required: auth
                        .as_ref()
                        .is_none_or(|a| *a.get_ref() == ClientAuth::Required),
                }),
                Err(e) => {
                    errors.push(ConfigError::at(ca.span(), e));
                    None
                }
            },
            (None, Some(auth)) => {
                errors.push(ConfigError::at(
                    auth.span(),
                    "`client_auth` needs `client_ca`, the CAs client certificates are checked against",
                ));
                None
            }
            (None, None) => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ListenerTls {
            certificates: Certificates::new(list, default),
            clients,
            expiries: expiries.into(),
            warn_within,
        })
    }

    /// Set up one handshake: the certificate for the name the client asked for, and the
    /// client-certificate check.
    pub fn prepare(&self, ssl: &mut SslRef) -> Result<(), openssl::error::ErrorStack> {
        use openssl::ssl::NameType;
        use pingora::tls::ext;
        let cert = self
            .certificates
            .select(ssl.servername(NameType::HOST_NAME));
        ext::ssl_use_certificate(ssl, &cert.chain[0])?;
        for intermediate in &cert.chain[1..] {
            ext::ssl_add_chain_cert(ssl, intermediate)?;
        }
        ext::ssl_use_private_key(ssl, &cert.key)?;
        if let Some(clients) = &self.clients {
            clients.apply(ssl)?;
        }
        Ok(())
    }
}

/// A client certificate the listener verified (mTLS), carried in the connection's TLS digest.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCert {
    /// The subject's common name; empty when the certificate has none.
    pub common_name: String,
}

impl ClientCert {
    /// The verified client certificate of a finished handshake, if the client sent one.
    pub fn of(ssl: &SslRef) -> Option<ClientCert> {
        let cert = ssl.peer_certificate()?;
        if ssl.verify_result() != X509VerifyResult::OK {
            return None;
        }
        let common_name = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok())
            .unwrap_or_default();
        Some(ClientCert { common_name })
    }
}

/// The CA certificates of an upstream's `ca` file, as Pingora's peer options hold them.
pub fn upstream_ca(path: &str) -> Result<std::sync::Arc<Box<[X509]>>, String> {
    certs::read_chain(path).map(|cas| std::sync::Arc::new(cas.into_boxed_slice()))
}

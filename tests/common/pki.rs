//! A throwaway PKI for TLS tests: a CA, and certificates it signs, written as PEM files, and
//! a small HTTP/1.1 client over TLS that reports which certificate the server chose.

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SERIAL: AtomicU32 = AtomicU32::new(1);

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate authority in a directory.
pub struct Ca {
    cert: X509,
    key: PKey<Private>,
    dir: PathBuf,
    /// The CA certificate's PEM file.
    pub pem: PathBuf,
}

/// A certificate and key on disk.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Pylon tests")
        .unwrap();
    name.build()
}

fn builder(cn: &str, key: &PKey<Private>, days: u32) -> X509Builder {
    let name = name(cn);
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(SERIAL.fetch_add(1, Ordering::Relaxed)).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(days).unwrap())
        .unwrap();
    b
}

impl Ca {
    pub fn new(dir: &Path, cn: &str) -> Ca {
        let key = key();
        let mut b = builder(cn, &key, 30);
        b.set_issuer_name(&name(cn)).unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let pem = dir.join(format!("{cn}-ca.pem"));
        std::fs::write(&pem, cert.to_pem().unwrap()).unwrap();
        Ca {
            cert,
            key,
            dir: dir.to_path_buf(),
            pem,
        }
    }

    /// A server certificate for `names` (DNS names), with `cn` as its common name, written as
    /// `<file>.pem` and `<file>.key`.
    pub fn server(&self, file: &str, cn: &str, names: &[&str]) -> Issued {
        self.issue(file, cn, names, false, 30)
    }

    /// A server certificate valid for `days` from now.
    pub fn server_for_days(&self, file: &str, cn: &str, names: &[&str], days: u32) -> Issued {
        self.issue(file, cn, names, false, days)
    }

    /// A client certificate for `cn`.
    pub fn client(&self, file: &str, cn: &str) -> Issued {
        self.issue(file, cn, &[], true, 30)
    }

    fn issue(&self, file: &str, cn: &str, names: &[&str], client: bool, days: u32) -> Issued {
        let key = key();
        let mut b = builder(cn, &key, days);
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        let usage = if client {
            ExtendedKeyUsage::new().client_auth().build().unwrap()
        } else {
            ExtendedKeyUsage::new().server_auth().build().unwrap()
        };
        b.append_extension(usage).unwrap();
        if !names.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for n in names {
                san.dns(n);
            }
            let ext = san
                .build(&b.x509v3_context(Some(&self.cert), None))
                .unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&issued.key, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        issued
    }
}

/// How a TLS test client connects.
#[derive(Default)]
pub struct Client<'a> {
    /// The server name sent (SNI); none: no SNI.
    pub sni: Option<&'a str>,
    /// Verify the server against this CA (and the name against `sni`).
    pub ca: Option<&'a Path>,
    /// Present this client certificate.
    pub cert: Option<&'a Issued>,
    /// Only this TLS version.
    pub version: Option<SslVersion>,
}

/// One HTTP/1.1 connection over TLS.
pub struct TlsConn {
    stream: SslStream<TcpStream>,
    /// The common name of the certificate the server presented.
    pub server_cn: String,
    /// The version negotiated (`TLSv1.3`).
    pub version: String,
}

impl Client<'_> {
    /// Connect and finish the handshake (for TLS 1.3, a refused client certificate shows
    /// only at the first read).
    pub fn connect(&self, port: u16) -> Result<TlsConn, String> {
        let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
        match self.ca {
            Some(ca) => builder.set_ca_file(ca).unwrap(),
            None => builder.set_verify(SslVerifyMode::NONE),
        }
        if let Some(v) = self.version {
            builder.set_min_proto_version(Some(v)).unwrap();
            builder.set_max_proto_version(Some(v)).unwrap();
        }
        if let Some(cert) = self.cert {
            builder.set_certificate_chain_file(&cert.cert).unwrap();
            builder
                .set_private_key_file(&cert.key, openssl::ssl::SslFiletype::PEM)
                .unwrap();
        }
        builder.set_alpn_protos(b"\x08http/1.1").unwrap();
        let connector = builder.build();
        let mut config = connector.configure().unwrap();
        config.set_use_server_name_indication(self.sni.is_some());
        config.set_verify_hostname(self.sni.is_some() && self.ca.is_some());
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let stream = config
            .connect(self.sni.unwrap_or("ignored.invalid"), tcp)
            .map_err(|e| e.to_string())?;
        let server_cn = stream
            .ssl()
            .peer_certificate()
            .and_then(|c| {
                c.subject_name()
                    .entries_by_nid(Nid::COMMONNAME)
                    .next()
                    .and_then(|e| e.data().to_string().ok())
            })
            .unwrap_or_default();
        let version = stream.ssl().version_str().to_string();
        Ok(TlsConn {
            stream,
            server_cn,
            version,
        })
    }
}

impl TlsConn {
    /// `GET path` on this connection (kept alive); the status and body, or why it failed.
    pub fn get(&mut self, host: &str, path: &str) -> Result<(u16, String), String> {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    }

    /// Send `request` as written; the status and body of the answer.
    pub fn raw(&mut self, request: &[u8]) -> Result<(u16, String), String> {
        self.stream.write_all(request).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head_end, length) = loop {
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, length);
            }
        };
        while buf.len() < head_end + length {
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed mid-body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status")?;
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        Ok((status, body))
    }
}

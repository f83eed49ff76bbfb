//! The handshake side of a TLS listener: Pingora's callbacks, answered from the live
//! configuration.

use super::{ClientCert, ListenerTls};
use crate::config::{TlsListenerConfig, TlsVersion};
use async_trait::async_trait;
use openssl::ssl::SslVersion;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::ALPN;
use std::any::Any;
use std::sync::Arc;

/// The TLS listeners of the live configuration, which a reload replaces. The running
/// snapshot implements it (`crate::runtime`), so this layer need not know the snapshot.
pub trait LiveListeners: Send + Sync + 'static {
    /// The certificates and client checks of the listener at `listen`.
    fn listener(&self, listen: &str) -> Option<Arc<ListenerTls>>;

    /// Every listener's, by address.
    fn listeners(&self) -> Vec<(String, Arc<ListenerTls>)>;
}

/// One listener's handshakes. Each reads the listener's certificates from the configuration
/// live when it starts, so a reload's certificates apply to the next handshake.
pub struct Handshakes {
    /// The listener's address: its key among the live TLS listeners.
    listen: String,
    live: Arc<dyn LiveListeners>,
}

impl Handshakes {
    pub fn new(listen: String, live: Arc<dyn LiveListeners>) -> Handshakes {
        Handshakes { listen, live }
    }
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        // A listener a reload removed keeps serving until the restart that closes it, with
        // the certificates it started with (carried by every later snapshot).
        let Some(tls) = self.live.listener(&self.listen) else {
            log::error!("TLS listener {} has no certificates", self.listen);
            return;
        };
        if let Err(e) = tls.prepare(ssl) {
            // The handshake then fails for want of a certificate.
            log::error!(
                "TLS listener {}: cannot use its certificate: {e}",
                self.listen
            );
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        ClientCert::of(ssl).map(|c| Arc::new(c) as Arc<dyn Any + Send + Sync>)
    }
}

/// Pingora's settings for a listener: Mozilla's intermediate profile (TLS 1.2 and 1.3 with
/// forward-secret AEAD ciphers only), the minimum version, and HTTP/2 by ALPN.
pub fn settings(config: &TlsListenerConfig, handshakes: Handshakes) -> Result<TlsSettings, String> {
    let mut settings = TlsSettings::with_callbacks(Box::new(handshakes))
        .map_err(|e| format!("TLS listener {}: {e}", config.listen.get_ref()))?;
    let min = match config.min_version {
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    settings
        .set_min_proto_version(Some(min))
        .map_err(|e| format!("TLS listener {}: {e}", config.listen.get_ref()))?;
    settings.set_alpn(if config.h2 { ALPN::H2H1 } else { ALPN::H1 });
    Ok(settings)
}

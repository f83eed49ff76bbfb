//! A `jwt` policy's keys and algorithms: which kind of key each algorithm needs, public keys from
//! PEM text, and the checks each accepted algorithm runs.

use super::settings::JwtConfig;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::{HashMap, HashSet};

/// Which kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    pub fn of(alg: Algorithm) -> Family {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => Family::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
            ES256 | ES384 => Family::Ec,
            EdDSA => Family::Ed,
        }
    }
}

/// A public key from PEM text: RSA, EC or Ed25519, whichever it is.
pub fn pem_key(pem: &str) -> Result<(DecodingKey, Family), String> {
    let pem = pem.as_bytes();
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, Family::Rsa));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, Family::Ec));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, Family::Ed));
    }
    Err("not a PEM public key (RSA, EC or Ed25519)".into())
}

/// One validation per accepted algorithm (algorithm names checked already).
pub(super) fn validations(config: &JwtConfig) -> HashMap<Algorithm, Validation> {
    let leeway = config.leeway.map_or(0, |l| l.0.as_secs());
    let mut required: HashSet<String> = HashSet::from(["exp".to_string()]);
    required.extend(
        config
            .required_claims
            .iter()
            .filter(|c| ["iss", "aud", "sub", "nbf"].contains(&c.as_str()))
            .cloned(),
    );
    let mut algorithms = HashMap::new();
    for alg in config.algorithms.iter().filter_map(|a| a.parse().ok()) {
        let mut v = Validation::new(alg);
        v.leeway = leeway;
        v.validate_nbf = true;
        v.required_spec_claims = required.clone();
        if let Some(iss) = &config.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        if config.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&config.audience);
            v.required_spec_claims.insert("aud".into());
        }
        algorithms.insert(alg, v);
    }
    algorithms
}

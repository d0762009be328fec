//! The pure parts of OpenID Connect sign-in: PKCE, and checking an ID token
//! (a JWT) against the provider's published keys (JWKS) and what this sign-in
//! expects. Fetching and redirecting live in the server.
//!
//! Only asymmetric signatures are accepted (RS256, ES256): `none` and HMAC
//! algorithms, which a forged header could ask for, are refused.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdTokenError {
    #[error("the ID token is not a JWT")]
    Malformed,
    #[error("the ID token is signed with `{0}`; only RS256 and ES256 are accepted")]
    Algorithm(String),
    #[error("no key `{0}` among the provider's keys")]
    UnknownKey(String),
    #[error("the ID token's signature does not verify")]
    Signature,
    #[error("the ID token was issued by `{0}`, not the configured issuer")]
    Issuer(String),
    #[error("the ID token is not meant for this client")]
    Audience,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token does not carry this sign-in's nonce")]
    Nonce,
}

/// A provider's published keys (`jwks_uri`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default)]
    pub y: Option<String>,
}

impl Jwks {
    pub fn has(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

/// What the ID token of this sign-in must say.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    /// Seconds since the epoch.
    pub now: i64,
}

/// Clocks differ a little between machines.
const LEEWAY: i64 = 60;

/// The key id a token names, to refresh the keys when it is unknown.
pub fn token_key_id(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    header["kid"].as_str().map(str::to_string)
}

/// The claims of a valid ID token.
pub fn verify_id_token(
    token: &str,
    jwks: &Jwks,
    expected: &Expected<'_>,
) -> Result<serde_json::Map<String, serde_json::Value>, IdTokenError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else { return Err(IdTokenError::Malformed) };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| IdTokenError::Malformed);
    let header: serde_json::Value = serde_json::from_slice(&decode(header)?).map_err(|_| IdTokenError::Malformed)?;
    let signature = decode(signature)?;
    let alg = header["alg"].as_str().unwrap_or_default().to_string();
    let kty = match alg.as_str() {
        "RS256" => "RSA",
        "ES256" => "EC",
        _ => return Err(IdTokenError::Algorithm(alg)),
    };
    let kid = header["kid"].as_str();
    let candidates: Vec<&Jwk> =
        jwks.keys.iter().filter(|key| key.kty == kty && (kid.is_none() || key.kid.as_deref() == kid)).collect();
    if candidates.is_empty() {
        return Err(IdTokenError::UnknownKey(kid.unwrap_or("(none)").to_string()));
    }
    let signed = &token[..token.len() - parts[2].len() - 1];
    let verified = candidates.iter().any(|key| verify(key, signed.as_bytes(), &signature));
    if !verified {
        return Err(IdTokenError::Signature);
    }
    let claims: serde_json::Value = serde_json::from_slice(&decode(claims)?).map_err(|_| IdTokenError::Malformed)?;
    let serde_json::Value::Object(claims) = claims else { return Err(IdTokenError::Malformed) };
    let issuer = claims.get("iss").and_then(|iss| iss.as_str()).unwrap_or_default();
    if issuer != expected.issuer {
        return Err(IdTokenError::Issuer(issuer.to_string()));
    }
    let audience_ok = match claims.get("aud") {
        Some(serde_json::Value::String(aud)) => aud == expected.client_id,
        Some(serde_json::Value::Array(auds)) => {
            auds.iter().any(|aud| aud.as_str() == Some(expected.client_id))
                && (auds.len() == 1 || claims.get("azp").and_then(|azp| azp.as_str()) == Some(expected.client_id))
        }
        _ => false,
    };
    if !audience_ok {
        return Err(IdTokenError::Audience);
    }
    let exp = claims.get("exp").and_then(serde_json::Value::as_i64).unwrap_or(0);
    if exp + LEEWAY < expected.now {
        return Err(IdTokenError::Expired);
    }
    if claims.get("nonce").and_then(|nonce| nonce.as_str()) != Some(expected.nonce) {
        return Err(IdTokenError::Nonce);
    }
    Ok(claims)
}

fn verify(key: &Jwk, message: &[u8], signature: &[u8]) -> bool {
    let decode = |part: &Option<String>| part.as_deref().and_then(|text| URL_SAFE_NO_PAD.decode(text).ok());
    match key.kty.as_str() {
        "RSA" => {
            let (Some(n), Some(e)) = (decode(&key.n), decode(&key.e)) else { return false };
            let components = signature::RsaPublicKeyComponents { n: trim_zeros(&n), e: trim_zeros(&e) };
            components.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok()
        }
        "EC" if key.crv.as_deref() == Some("P-256") => {
            let (Some(x), Some(y)) = (decode(&key.x), decode(&key.y)) else { return false };
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
        }
        _ => false,
    }
}

fn trim_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|byte| *byte != 0).unwrap_or(bytes.len().saturating_sub(1));
    &bytes[start..]
}

/// PKCE (RFC 7636): the `code_challenge` for a verifier, method S256.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};

    use super::*;

    fn es256_key() -> (EcdsaKeyPair, Jwks) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = key.public_key().as_ref().to_vec();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some("k1".into()),
            n: None,
            e: None,
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode(&point[1..33])),
            y: Some(URL_SAFE_NO_PAD.encode(&point[33..])),
        };
        (key, Jwks { keys: vec![jwk] })
    }

    fn sign(key: &EcdsaKeyPair, header: serde_json::Value, claims: serde_json::Value) -> String {
        let signed =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = key.sign(&rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    #[test]
    fn id_tokens_are_checked_for_signature_issuer_audience_expiry_and_nonce() {
        let (key, jwks) = es256_key();
        let expected = Expected { issuer: "https://idp", client_id: "updraft", nonce: "n1", now: 1_000_000 };
        let header = serde_json::json!({ "alg": "ES256", "kid": "k1" });
        let claims =
            serde_json::json!({ "iss": "https://idp", "aud": "updraft", "exp": 1_000_100, "nonce": "n1", "sub": "42" });
        let good = sign(&key, header.clone(), claims.clone());
        assert_eq!(verify_id_token(&good, &jwks, &expected).unwrap()["sub"], "42");
        assert_eq!(token_key_id(&good).as_deref(), Some("k1"));

        let with = |field: &str, value: serde_json::Value| {
            let mut claims = claims.clone();
            claims[field] = value;
            verify_id_token(&sign(&key, header.clone(), claims), &jwks, &expected).unwrap_err()
        };
        assert_eq!(with("iss", "https://evil".into()), IdTokenError::Issuer("https://evil".into()));
        assert_eq!(with("aud", "other".into()), IdTokenError::Audience);
        assert_eq!(with("aud", serde_json::json!(["other", "updraft"])), IdTokenError::Audience, "needs azp");
        assert_eq!(with("exp", 999_000.into()), IdTokenError::Expired);
        assert_eq!(with("nonce", "replayed".into()), IdTokenError::Nonce);

        let (other_key, _) = es256_key();
        let forged = sign(&other_key, header.clone(), claims.clone());
        assert_eq!(verify_id_token(&forged, &jwks, &expected).unwrap_err(), IdTokenError::Signature);
        let (_, other_jwks) = es256_key();
        let mut renamed = other_jwks;
        renamed.keys[0].kid = Some("k2".into());
        assert_eq!(verify_id_token(&good, &renamed, &expected).unwrap_err(), IdTokenError::UnknownKey("k1".into()));
        let unsigned =
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(claims.to_string()));
        assert_eq!(verify_id_token(&unsigned, &jwks, &expected).unwrap_err(), IdTokenError::Algorithm("none".into()));
        let hmac = sign(&key, serde_json::json!({ "alg": "HS256", "kid": "k1" }), claims);
        assert_eq!(verify_id_token(&hmac, &jwks, &expected).unwrap_err(), IdTokenError::Algorithm("HS256".into()));
        assert_eq!(verify_id_token("a.b", &jwks, &expected).unwrap_err(), IdTokenError::Malformed);
    }

    #[test]
    fn pkce_matches_rfc_7636() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}

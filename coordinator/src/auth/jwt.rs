//! JWT bearer tokens: HS256, RS256 or ES256, verified against one key file
//! (an HMAC secret, or an RSA or EC public key in PEM) or a JWKS file;
//! expiry always checked, issuer and audience when configured; the user is
//! a configurable claim (`sub` by default).

use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use weft_common::auth::WatchedFile;

/// `--jwt-*` settings.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    /// HMAC secret (raw bytes) or PEM public key (RSA -> RS256, EC -> ES256).
    pub key_file: Option<PathBuf>,
    /// A JSON Web Key Set; the token's `kid` picks the key.
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim naming the user.
    pub user_claim: String,
}

/// One verification key.
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys of a key file or JWKS file.
pub struct Keys(Vec<Key>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|k| (&k.kid, k.algorithm)))
            .finish()
    }
}

impl Keys {
    fn from_key_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read the JWT key file {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        let key = if text.contains("-----BEGIN") {
            if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
                (Algorithm::ES256, key)
            } else {
                return Err(format!(
                    "JWT key file {}: a PEM file, but neither an RSA nor an EC (P-256) public key",
                    path.display()
                ));
            }
        } else {
            let secret = text.trim();
            if secret.len() < 32 {
                return Err(format!(
                    "JWT key file {}: an HS256 secret must have at least 32 bytes, it has {}",
                    path.display(),
                    secret.len()
                ));
            }
            (
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            )
        };
        Ok(Self(vec![Key {
            kid: None,
            algorithm: key.0,
            key: key.1,
        }]))
    }

    fn from_jwks_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWKS file {}: {e}", path.display()))?;
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| format!("JWKS file {}: not a JSON Web Key Set: {e}", path.display()))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let algorithm = match (jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(KeyAlgorithm::HS256), _) => Algorithm::HS256,
                (Some(KeyAlgorithm::RS256), _) => Algorithm::RS256,
                (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
                (None, AlgorithmParameters::OctetKey(_)) => Algorithm::HS256,
                (other, _) => {
                    tracing::warn!(
                        path = %path.display(),
                        key = i,
                        "JWKS key skipped: algorithm {other:?} is not HS256, RS256 or ES256"
                    );
                    continue;
                }
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| format!("JWKS file {}: key {i} is unusable: {e}", path.display()))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        if keys.is_empty() {
            return Err(format!(
                "JWKS file {}: no HS256, RS256 or ES256 key",
                path.display()
            ));
        }
        Ok(Self(keys))
    }
}

/// Verifies JWTs; the key or JWKS file is read again when it changes.
#[derive(Debug)]
pub struct JwtVerifier {
    keys: WatchedFile<Keys>,
    issuer: Option<String>,
    audience: Option<String>,
    user_claim: String,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Result<Self, String> {
        let keys = match (&settings.key_file, &settings.jwks_file) {
            (Some(path), None) => WatchedFile::open(path, Keys::from_key_file)?,
            (None, Some(path)) => WatchedFile::open(path, Keys::from_jwks_file)?,
            (Some(_), Some(_)) => {
                return Err("give --jwt-key-file or --jwt-jwks-file, not both".to_string())
            }
            (None, None) => {
                return Err("JWT authentication needs --jwt-key-file or --jwt-jwks-file".into())
            }
        };
        Ok(Self {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            user_claim: if settings.user_claim.is_empty() {
                "sub".to_string()
            } else {
                settings.user_claim.clone()
            },
        })
    }

    /// Whether `token` looks like a JWT (three base64url parts).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && token.starts_with("ey")
    }

    /// The user a valid token names; the error says what is wrong.
    pub fn verify(&self, token: &str) -> Result<String, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("the bearer token is not a well-formed JWT: {e}"))?;
        let keys = self.keys.get();
        let candidates: Vec<&Key> = keys
            .0
            .iter()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .filter(|k| k.algorithm == header.alg)
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "no configured key verifies a {:?} token{} (the keys are {})",
                header.alg,
                header
                    .kid
                    .as_ref()
                    .map(|k| format!(" with kid \"{k}\""))
                    .unwrap_or_default(),
                keys.0
                    .iter()
                    .map(|k| format!("{:?}", k.algorithm))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 30;
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let mut last = String::new();
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => {
                    return match data.claims.get(&self.user_claim) {
                        Some(serde_json::Value::String(user)) if !user.is_empty() => {
                            Ok(user.clone())
                        }
                        _ => Err(format!(
                        "the token has no string claim \"{}\" naming the user (--jwt-user-claim)",
                        self.user_claim
                    )),
                    }
                }
                Err(e) => last = self.explain(e.kind()),
            }
        }
        Err(last)
    }

    fn explain(&self, kind: &ErrorKind) -> String {
        match kind {
            ErrorKind::ExpiredSignature => "the token has expired; get a new one".to_string(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
            ErrorKind::InvalidSignature => {
                "the token's signature does not verify with the configured key (forged, or signed by another issuer)".to_string()
            }
            ErrorKind::InvalidIssuer => format!(
                "the token's issuer is not \"{}\"",
                self.issuer.as_deref().unwrap_or_default()
            ),
            ErrorKind::InvalidAudience => format!(
                "the token's audience is not \"{}\"",
                self.audience.as_deref().unwrap_or_default()
            ),
            ErrorKind::MissingRequiredClaim(c) => format!("the token has no \"{c}\" claim"),
            other => format!("the token is not valid: {other:?}"),
        }
    }
}

//! Who a Flight SQL caller is.
//!
//! The handshake turns `Basic` credentials (checked against the password
//! file) or a JWT into a Weft session token; every other RPC must carry
//! `authorization: Bearer <token>` with a session token or a JWT, or it is
//! refused `Unauthenticated` with a message saying what was wrong (missing,
//! wrong password, expired, forged). Session tokens are
//! `weft-session1.<user>.<expiry>.<HMAC>`, signed with a key derived from the
//! cluster secret (so every coordinator of the cluster accepts them) or,
//! without one, a key of this process. A user removed from the password
//! file loses their sessions at once.
//!
//! Without a password file and a JWT key nothing is checked: every caller
//! is the same anonymous user and may do everything; `weft-coordinator`
//! then serves only on loopback unless told `--insecure`.

pub mod jwt;
pub mod password;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ring::hmac;
use tonic::metadata::MetadataMap;
use tonic::Status;
use weft_common::auth::{hex, unix_now, ClusterSecret, WatchedFile};

use jwt::{JwtSettings, JwtVerifier};
use password::PasswordFile;

/// How long a session token from the handshake is valid.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

const SESSION_PREFIX: &str = "weft-session1";

/// The caller of an RPC, put into the request's extensions by the service
/// and into each query's session config (system tables read it there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Empty when authentication is off.
    pub user: String,
    /// May see, read and cancel every user's queries.
    pub admin: bool,
}

impl Identity {
    /// The caller when authentication is off: no user, may do everything.
    pub fn open() -> Self {
        Self {
            user: String::new(),
            admin: true,
        }
    }

    /// Whether this caller may see and act on a query of `owner`.
    pub fn may_access(&self, owner: &str) -> bool {
        self.admin || self.user == owner
    }
}

impl datafusion::config::ConfigExtension for Identity {
    const PREFIX: &'static str = "weft_identity";
}

impl datafusion::config::ExtensionOptions for Identity {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn cloned(&self) -> Box<dyn datafusion::config::ExtensionOptions> {
        Box::new(self.clone())
    }
    fn set(&mut self, key: &str, _value: &str) -> datafusion::error::Result<()> {
        Err(datafusion::error::DataFusionError::Plan(format!(
            "weft_identity.{key} cannot be set"
        )))
    }
    fn entries(&self) -> Vec<datafusion::config::ConfigEntry> {
        Vec::new()
    }
}

/// `weft-coordinator` authentication flags.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub password_file: Option<PathBuf>,
    pub jwt: Option<JwtSettings>,
    /// Users who may see and act on every query.
    pub admins: Vec<String>,
}

/// Checks callers; see the module docs.
pub struct Authenticator {
    passwords: Option<WatchedFile<PasswordFile>>,
    jwt: Option<JwtVerifier>,
    admins: HashSet<String>,
    session_key: hmac::Key,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("passwords", &self.passwords)
            .field("jwt", &self.jwt)
            .field("admins", &self.admins)
            .finish_non_exhaustive()
    }
}

fn unauthenticated(message: impl std::fmt::Display) -> Status {
    Status::unauthenticated(message.to_string())
}

impl Authenticator {
    /// Reads the password file and JWT keys now (errors name the file).
    pub fn new(settings: &AuthSettings, secret: Option<&ClusterSecret>) -> Result<Self, String> {
        let passwords = settings
            .password_file
            .as_deref()
            .map(|p| WatchedFile::open(p, PasswordFile::load))
            .transpose()?;
        let jwt = settings.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        let session_key = match secret {
            Some(secret) => secret.session_key(),
            None => {
                let rng = ring::rand::SystemRandom::new();
                hmac::Key::generate(hmac::HMAC_SHA256, &rng)
                    .map_err(|_| "the system's random number generator failed".to_string())?
            }
        };
        Ok(Self {
            passwords,
            jwt,
            admins: settings.admins.iter().cloned().collect(),
            session_key,
        })
    }

    /// No checks at all (the default of an embedded or loopback cluster).
    pub fn open() -> Self {
        Self::new(&AuthSettings::default(), None).expect("no files to read")
    }

    /// Whether callers must authenticate.
    pub fn enabled(&self) -> bool {
        self.passwords.is_some() || self.jwt.is_some()
    }

    fn identity(&self, user: String) -> Identity {
        Identity {
            admin: self.admins.contains(&user),
            user,
        }
    }

    fn session_token(&self, user: &str) -> String {
        let expires = unix_now() + SESSION_TTL.as_secs();
        let user = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(user);
        let payload = format!("{SESSION_PREFIX}.{user}.{expires}");
        let tag = hmac::sign(&self.session_key, payload.as_bytes());
        format!("{payload}.{}", hex(tag.as_ref()))
    }

    fn verify_session(&self, token: &str) -> Result<String, String> {
        let malformed = || "the session token is malformed".to_string();
        let (payload, tag) = token.rsplit_once('.').ok_or_else(malformed)?;
        let tag = (0..tag.len())
            .step_by(2)
            .map(|i| {
                tag.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(malformed)?;
        hmac::verify(&self.session_key, payload.as_bytes(), &tag).map_err(|_| {
            "the session token was not issued by this cluster (forged, or from a coordinator \
             with another cluster secret or since restarted); sign in again"
                .to_string()
        })?;
        let mut parts = payload.split('.');
        let (_, user, expires) = (parts.next(), parts.next(), parts.next());
        let user = user
            .and_then(|u| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(u)
                    .ok()
            })
            .and_then(|u| String::from_utf8(u).ok())
            .ok_or_else(malformed)?;
        let expires: u64 = expires.and_then(|e| e.parse().ok()).ok_or_else(malformed)?;
        if unix_now() > expires {
            return Err("the session token has expired; sign in again".to_string());
        }
        if let Some(passwords) = &self.passwords {
            if !passwords.get().contains(&user) && self.jwt.is_none() {
                return Err(format!("user {user} is no longer in the password file"));
            }
        }
        Ok(user)
    }

    /// The caller of an RPC other than the handshake.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        if !self.enabled() {
            return Ok(Identity::open());
        }
        let header = metadata.get("authorization").ok_or_else(|| {
            unauthenticated(
                "no credentials: this coordinator requires authentication; sign in with a user \
                 name and password (Flight SQL handshake) or send `authorization: Bearer <token>`",
            )
        })?;
        let header = header
            .to_str()
            .map_err(|_| unauthenticated("the authorization header is not text"))?;
        let Some(token) = strip_scheme(header, "Bearer") else {
            return Err(unauthenticated(
                "send `authorization: Bearer <token>` with the token the handshake returned \
                 (Basic credentials are accepted by the handshake only)",
            ));
        };
        if token.starts_with(SESSION_PREFIX) {
            return self
                .verify_session(token)
                .map(|user| self.identity(user))
                .map_err(unauthenticated);
        }
        match &self.jwt {
            Some(jwt) if JwtVerifier::looks_like_jwt(token) => jwt
                .verify(token)
                .map(|user| self.identity(user))
                .map_err(unauthenticated),
            _ => Err(unauthenticated(
                "the bearer token is neither a session token of this cluster nor a JWT this \
                 coordinator accepts",
            )),
        }
    }

    /// The handshake: `Basic` credentials (header, or a `BasicAuth` payload)
    /// or a bearer JWT in, a session token out.
    pub async fn handshake(
        self: &Arc<Self>,
        metadata: &MetadataMap,
        payload: &[u8],
    ) -> Result<(Identity, String), Status> {
        if !self.enabled() {
            return Ok((Identity::open(), self.session_token("")));
        }
        let header = metadata
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        let basic = match header.as_deref() {
            Some(h) if strip_scheme(h, "Bearer").is_some() => {
                let identity = self.authenticate(metadata)?;
                let token = self.session_token(&identity.user);
                return Ok((identity, token));
            }
            Some(h) => strip_scheme(h, "Basic").map(decode_basic).ok_or_else(|| {
                unauthenticated("the authorization header is neither Basic nor Bearer")
            })??,
            None => {
                let auth = <arrow_flight::BasicAuth as prost::Message>::decode(payload)
                    .ok()
                    .filter(|a| !a.username.is_empty());
                auth.map(|a| (a.username, a.password)).ok_or_else(|| {
                    unauthenticated(
                        "no credentials: sign in with a user name and password (Basic) or a bearer JWT",
                    )
                })?
            }
        };
        let (user, password) = basic;
        let Some(passwords) = &self.passwords else {
            return Err(unauthenticated(
                "this coordinator accepts JWT bearer tokens only (no --password-file)",
            ));
        };
        let file = passwords.get();
        let checked_user = user.clone();
        let ok = tokio::task::spawn_blocking(move || file.verify(&checked_user, &password))
            .await
            .map_err(|e| Status::internal(format!("password check failed: {e}")))?;
        if !ok {
            tracing::warn!(user = %user, "sign-in refused: wrong user name or password");
            return Err(unauthenticated(format!(
                "wrong user name or password (user \"{user}\")"
            )));
        }
        let token = self.session_token(&user);
        Ok((self.identity(user), token))
    }
}

fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = header.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn decode_basic(encoded: &str) -> Result<(String, String), Status> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| unauthenticated("the Basic credentials are not base64"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| unauthenticated("the Basic credentials are not UTF-8"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| unauthenticated("the Basic credentials are not user:password"))?;
    Ok((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests;

//! Node identity inside a cluster: the shared cluster secret, the tokens
//! nodes sign their internal RPCs with, and the grants that let a client
//! read one query's results directly from a worker.
//!
//! Every node of a secured cluster is started with the same
//! `--cluster-secret-file`. A node calling another (launch, cancel, status,
//! task `DoGet`) sends [`NODE_TOKEN_METADATA`]: `weft-node1.<unix
//! seconds>.<HMAC-SHA256>`, fresh within [`NODE_TOKEN_SKEW`]; a worker
//! refuses anything else with `Unauthenticated`. With `--direct-results` a
//! client reads a worker's output with a ticket that carries a
//! [`ResultGrant`]: the query, the user and an expiry, signed with the same
//! secret, valid for that query's outputs only.
//!
//! Keys are derived per purpose (`HMAC(secret, purpose)`), so a node token
//! can never pass as a grant or a session token, nor the other way round.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use ring::hmac;

/// gRPC metadata carrying a node token on internal RPCs.
pub const NODE_TOKEN_METADATA: &str = "weft-node-token";

/// How far a node token's time may be from the receiver's clock.
pub const NODE_TOKEN_SKEW: Duration = Duration::from_secs(300);

/// Shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

const NODE_TOKEN_PREFIX: &str = "weft-node1";

/// The secret every node of a cluster shares (`--cluster-secret-file`).
/// `Debug` never shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    node: hmac::Key,
    grant: hmac::Key,
    session: hmac::Key,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// Reads the secret from `path` (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the cluster secret file {}: {e}",
                path.display()
            )
        })?;
        Self::from_bytes(trim(&bytes)).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A secret from its bytes; at least [`MIN_SECRET_BYTES`].
    pub fn from_bytes(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the cluster secret has {} bytes, at least {MIN_SECRET_BYTES} are needed \
                 (e.g. `openssl rand -hex 32 > cluster.secret`, or `weft certs`)",
                secret.len()
            ));
        }
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |purpose: &str| {
            let tag = hmac::sign(&root, purpose.as_bytes());
            hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref())
        };
        Ok(Self {
            node: derive("weft node token v1"),
            grant: derive("weft result grant v1"),
            session: derive("weft session token v1"),
        })
    }

    /// A fresh node token for an internal RPC.
    pub fn node_token(&self) -> String {
        let now = unix_now();
        let payload = format!("{NODE_TOKEN_PREFIX}.{now}");
        let tag = hmac::sign(&self.node, payload.as_bytes());
        format!("{payload}.{}", hex(tag.as_ref()))
    }

    /// Checks a node token; the error says what is wrong with it.
    pub fn verify_node_token(&self, token: &str) -> Result<(), String> {
        let (payload, tag) = token
            .rsplit_once('.')
            .ok_or("the node token is malformed")?;
        let time = payload
            .strip_prefix(NODE_TOKEN_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or("the node token is malformed")?;
        let tag = unhex(tag).ok_or("the node token is malformed")?;
        hmac::verify(&self.node, payload.as_bytes(), &tag).map_err(|_| {
            "the node token is not signed with this cluster's secret (is --cluster-secret-file the same file on every node?)"
                .to_string()
        })?;
        let skew = unix_now().abs_diff(time);
        if skew > NODE_TOKEN_SKEW.as_secs() {
            return Err(format!(
                "the node token is {skew} s away from this node's clock (at most {} s are \
                 accepted; are the nodes' clocks synchronised?)",
                NODE_TOKEN_SKEW.as_secs()
            ));
        }
        Ok(())
    }

    /// Signs a grant to read `query_id`'s outputs as `user` until `expires`
    /// (unix seconds).
    pub fn sign_grant(&self, query_id: &str, user: &str, expires: u64) -> Vec<u8> {
        hmac::sign(&self.grant, &grant_payload(query_id, user, expires))
            .as_ref()
            .to_vec()
    }

    /// Checks a grant for `query_id`.
    pub fn verify_grant(&self, query_id: &str, grant: &ResultGrant) -> Result<(), String> {
        hmac::verify(
            &self.grant,
            &grant_payload(query_id, &grant.user, grant.expires),
            &grant.signature,
        )
        .map_err(|_| {
            format!("the ticket's grant is not valid for query {query_id} (forged or altered)")
        })?;
        if unix_now() > grant.expires {
            return Err(format!(
                "the ticket's grant for query {query_id} has expired; run the query again"
            ));
        }
        Ok(())
    }

    /// The key coordinators sign client session tokens with, so a token
    /// from one coordinator is good on every coordinator of the cluster.
    pub fn session_key(&self) -> hmac::Key {
        self.session.clone()
    }
}

/// A signed permission to read one query's outputs from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultGrant {
    pub user: String,
    /// Unix seconds.
    pub expires: u64,
    pub signature: Vec<u8>,
}

fn grant_payload(query_id: &str, user: &str, expires: u64) -> Vec<u8> {
    // Lengths first: no two (query, user) pairs share an encoding.
    format!(
        "{}:{query_id}:{}:{user}:{expires}",
        query_id.len(),
        user.len()
    )
    .into_bytes()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A file parsed into `T`, parsed again when it changes (size or
/// modification time) and read through [`WatchedFile::get`]. A change that
/// does not parse keeps the last good value and logs why, so a half-written
/// file never locks everyone out.
pub struct WatchedFile<T> {
    path: PathBuf,
    /// Every file the value is made of (a certificate and its key).
    watched: Vec<PathBuf>,
    parse: Parser<T>,
    /// The files' stamps when last parsed, and the value.
    state: Mutex<(Vec<Stamp>, Arc<T>)>,
}

type Parser<T> = Box<dyn Fn(&Path) -> Result<T, String> + Send + Sync>;

/// Modification time and size of a file; `None` when it cannot be read.
type Stamp = Option<(SystemTime, u64)>;

impl<T> std::fmt::Debug for WatchedFile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> WatchedFile<T> {
    /// Reads and parses `path` now; an error names the file.
    pub fn open(
        path: &Path,
        parse: impl Fn(&Path) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        Self::open_with(path, &[], parse)
    }

    /// [`WatchedFile::open`], parsed again when `path` or any of `others` changes.
    pub fn open_with(
        path: &Path,
        others: &[PathBuf],
        parse: impl Fn(&Path) -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let watched: Vec<PathBuf> = std::iter::once(path.to_path_buf())
            .chain(others.iter().cloned())
            .collect();
        let stamps = watched.iter().map(|p| stamp(p)).collect();
        let value = parse(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            watched,
            parse: Box::new(parse),
            state: Mutex::new((stamps, Arc::new(value))),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current value, parsed again first if the file changed.
    pub fn get(&self) -> Arc<T> {
        let now: Vec<_> = self.watched.iter().map(|p| stamp(p)).collect();
        let mut state = self.state.lock();
        if now.iter().all(Option::is_some) && now != state.0 {
            state.0 = now;
            match (self.parse)(&self.path) {
                Ok(value) => {
                    tracing::info!(path = %self.path.display(), "reloaded");
                    state.1 = Arc::new(value);
                }
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    "the file changed but cannot be used, keeping its previous contents: {e}"
                ),
            }
        }
        Arc::clone(&state.1)
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Node security flags shared by `weft-coordinator` and `weft-worker`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeSecurityArgs {
    /// File holding the secret shared by every node of the cluster (at least
    /// 32 bytes, e.g. `openssl rand -hex 32`): internal RPCs are signed with
    /// it, and a worker refuses calls that are not.
    #[arg(long, env = "WEFT_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Serve on a non-loopback address without authentication (anyone who
    /// reaches the port may run queries, or launch tasks on a worker).
    #[arg(long, env = "WEFT_INSECURE")]
    pub insecure: bool,
}

impl NodeSecurityArgs {
    /// The cluster secret, if a file is given.
    pub fn cluster_secret(&self) -> Result<Option<Arc<ClusterSecret>>, String> {
        self.cluster_secret_file
            .as_deref()
            .map(|p| ClusterSecret::load(p).map(Arc::new))
            .transpose()
    }
}

/// Refuses to serve `listen` without authentication unless it is a
/// loopback address or the operator said `--insecure`. `how` names the
/// flags that would secure it.
pub fn check_exposure(
    listen: std::net::SocketAddr,
    secured: bool,
    insecure: bool,
    how: &str,
) -> Result<(), String> {
    if secured || insecure || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "refusing to serve on {listen} without authentication: any host that reaches it could \
         use it. Configure {how}, listen on a loopback address (127.0.0.1), or pass --insecure \
         if the network itself is trusted"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(fill: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[fill; 32]).unwrap()
    }

    #[test]
    fn node_tokens_verify_only_with_the_same_secret() {
        let (a, b) = (secret(1), secret(2));
        let token = a.node_token();
        assert!(a.verify_node_token(&token).is_ok());
        let err = b.verify_node_token(&token).unwrap_err();
        assert!(err.contains("--cluster-secret-file"), "{err}");
        assert!(a.verify_node_token("weft-node1.12.zz").is_err());
        assert!(a.verify_node_token("").is_err());
        // An altered time breaks the signature.
        let (payload, tag) = token.rsplit_once('.').unwrap();
        let altered = format!("{}9.{tag}", payload);
        assert!(a.verify_node_token(&altered).is_err());
    }

    #[test]
    fn stale_node_tokens_are_refused() {
        let a = secret(1);
        let old = unix_now() - NODE_TOKEN_SKEW.as_secs() - 60;
        let payload = format!("{NODE_TOKEN_PREFIX}.{old}");
        let tag = hmac::sign(&a.node, payload.as_bytes());
        let err = a
            .verify_node_token(&format!("{payload}.{}", hex(tag.as_ref())))
            .unwrap_err();
        assert!(err.contains("clock"), "{err}");
    }

    #[test]
    fn grants_are_scoped_to_query_and_user() {
        let a = secret(1);
        let expires = unix_now() + 60;
        let grant = ResultGrant {
            user: "alice".into(),
            expires,
            signature: a.sign_grant("q1", "alice", expires),
        };
        assert!(a.verify_grant("q1", &grant).is_ok());
        assert!(a.verify_grant("q2", &grant).is_err());
        let bob = ResultGrant {
            user: "bob".into(),
            ..grant.clone()
        };
        assert!(a.verify_grant("q1", &bob).is_err());
        assert!(secret(2).verify_grant("q1", &grant).is_err());
        let expired = ResultGrant {
            expires: 1,
            signature: a.sign_grant("q1", "alice", 1),
            ..grant
        };
        assert!(a
            .verify_grant("q1", &expired)
            .unwrap_err()
            .contains("expired"));
    }

    #[test]
    fn short_secrets_and_files_are_refused_clearly() {
        let err = ClusterSecret::from_bytes(b"short").unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let err = ClusterSecret::load(&path).unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, format!("  {}\n", "ab".repeat(32))).unwrap();
        let loaded = ClusterSecret::load(&path).unwrap();
        let direct = ClusterSecret::from_bytes("ab".repeat(32).as_bytes()).unwrap();
        assert!(direct.verify_node_token(&loaded.node_token()).is_ok());
        assert_eq!(format!("{loaded:?}"), "ClusterSecret(<redacted>)");
    }

    #[test]
    fn only_loopback_may_go_without_authentication() {
        let any: std::net::SocketAddr = "0.0.0.0:50050".parse().unwrap();
        let lo: std::net::SocketAddr = "127.0.0.1:50050".parse().unwrap();
        let lo6: std::net::SocketAddr = "[::1]:50050".parse().unwrap();
        assert!(check_exposure(lo, false, false, "x").is_ok());
        assert!(check_exposure(lo6, false, false, "x").is_ok());
        assert!(check_exposure(any, true, false, "x").is_ok());
        assert!(check_exposure(any, false, true, "x").is_ok());
        let err = check_exposure(any, false, false, "--password-file").unwrap_err();
        assert!(
            err.contains("0.0.0.0:50050")
                && err.contains("--password-file")
                && err.contains("--insecure"),
            "{err}"
        );
    }

    #[test]
    fn watched_files_reload_on_change_and_keep_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let file = WatchedFile::open(&path, |p| {
            std::fs::read_to_string(p)
                .map_err(|e| e.to_string())?
                .trim()
                .parse::<u32>()
                .map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(*file.get(), 1);
        std::fs::write(&path, "22").unwrap();
        assert_eq!(*file.get(), 22);
        std::fs::write(&path, "not a number").unwrap();
        assert_eq!(*file.get(), 22);
    }
}

//! etcd-backed membership.
//!
//! Layout: a worker puts `<prefix><worker id>` = JSON [`WorkerInfo`] (prefix
//! [`WORKERS_PREFIX`] unless configured),
//! attached to a lease of `lease_ttl` seconds that it keeps alive every third
//! of the TTL. A worker that dies stops renewing; etcd deletes its key when the
//! lease expires and the coordinator's prefix watch drops it from scheduling.
//!
//! The keep-alive runs on its own thread, with its own single-threaded tokio
//! runtime and etcd connection: query work saturating the process's runtime
//! (DataFusion operators are CPU-bound) must not delay the renewals until
//! the lease expires under a live worker.
//!
//! When a renewal fails, the worker asks etcd about its lease once etcd
//! answers. A lease that outlived the interruption (etcd restarted, one
//! renewal lost) is kept and nothing changes. A lease that expired means
//! the worker was out of the membership while it lived (a partition, a
//! pause longer than the TTL): it registers under a new lease as the next
//! epoch ([`WorkerInfo::epoch`], [`Registration::epochs`]) and drops the
//! tasks of the earlier one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{sorted, Members, Registration, Registry, RegistryError, WorkerInfo};

/// Default key prefix under which workers register.
pub const WORKERS_PREFIX: &str = "/weft/workers/";

/// How to reach etcd and how long registrations live.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Lease TTL in seconds: a dead worker leaves the membership within it.
    pub lease_ttl_secs: i64,
    pub connect_timeout: Duration,
    /// Key prefix of worker registrations; clusters sharing one etcd use
    /// different prefixes.
    pub prefix: String,
    /// TLS towards etcd (`https://` endpoints).
    pub tls: Option<EtcdTls>,
    /// etcd user authentication.
    pub auth: Option<EtcdAuth>,
}

/// Files of a TLS connection to etcd: the CA that signed etcd's server
/// certificate and, for client-certificate authentication, this node's
/// certificate and key (PEM).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// etcd user and password (`etcdctl user add`).
#[derive(Clone)]
pub struct EtcdAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl EtcdTls {
    fn options(&self) -> Result<TlsOptions, String> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("--etcd-ca-file", ca)?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read("--etcd-cert-file", cert)?,
                    read("--etcd-key-file", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(
                    "--etcd-cert-file and --etcd-key-file go together: give both or neither"
                        .to_string(),
                )
            }
        }
        Ok(tls)
    }
}

impl EtcdSettings {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            lease_ttl_secs: 5,
            connect_timeout: Duration::from_secs(3),
            prefix: WORKERS_PREFIX.to_string(),
            tls: None,
            auth: None,
        }
    }

    fn display(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Membership in etcd. Create with [`EtcdRegistry::connect`].
pub struct EtcdRegistry {
    settings: EtcdSettings,
    client: Client,
    members: Arc<watch::Sender<Members>>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        if let Some(h) = self.watcher.lock().take() {
            h.abort();
        }
    }
}

async fn connect_once(settings: &EtcdSettings) -> Result<Client, RegistryError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.connect_timeout)
        .with_timeout(settings.connect_timeout * 2);
    if let Some(tls) = &settings.tls {
        options =
            options.with_tls(
                tls.options()
                    .map_err(|message| RegistryError::Unreachable {
                        endpoints: settings.display(),
                        message,
                    })?,
            );
    }
    if let Some(auth) = &settings.auth {
        options = options.with_user(auth.user.clone(), auth.password.clone());
    }
    let mut client = Client::connect(&settings.endpoints, Some(options))
        .await
        .map_err(|e| RegistryError::Unreachable {
            endpoints: settings.display(),
            message: e.to_string(),
        })?;
    // `connect` is lazy for some transports; a status call proves the endpoint answers.
    client
        .status()
        .await
        .map_err(|e| RegistryError::Unreachable {
            endpoints: settings.display(),
            message: e.to_string(),
        })?;
    Ok(client)
}

impl EtcdRegistry {
    /// Connects to etcd, retrying with exponential backoff (logging every
    /// failure with the endpoint) for up to `max_wait`.
    pub async fn connect(
        settings: EtcdSettings,
        max_wait: Duration,
    ) -> Result<Self, RegistryError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut backoff = Duration::from_millis(200);
        let client = loop {
            match connect_once(&settings).await {
                Ok(c) => break c,
                Err(e) => {
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(e);
                    }
                    tracing::warn!("{e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let (tx, _rx) = watch::channel(Arc::new(Vec::new()));
        Ok(Self {
            settings,
            client,
            members: Arc::new(tx),
            watcher: Mutex::new(None),
        })
    }

    /// Starts following the membership (what the coordinator does). Returns
    /// once the first snapshot is loaded.
    pub async fn start_watch(&self) -> Result<(), RegistryError> {
        let mut client = self.client.clone();
        let revision = load_snapshot(&mut client, &self.settings, &self.members).await?;
        let settings = self.settings.clone();
        let members = Arc::clone(&self.members);
        let handle = tokio::spawn(watch_loop(client, settings, members, revision));
        if let Some(old) = self.watcher.lock().replace(handle) {
            old.abort();
        }
        Ok(())
    }
}

async fn load_snapshot(
    client: &mut Client,
    settings: &EtcdSettings,
    members: &watch::Sender<Members>,
) -> Result<i64, RegistryError> {
    let resp = client
        .get(
            settings.prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| RegistryError::Operation {
            endpoints: settings.display(),
            operation: "reading the worker list",
            message: e.to_string(),
        })?;
    let mut workers = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<WorkerInfo>(kv.value()) {
            Ok(w) => workers.push(w),
            Err(e) => tracing::warn!(
                key = %String::from_utf8_lossy(kv.key()),
                "ignoring malformed worker registration: {e}"
            ),
        }
    }
    members.send_replace(sorted(workers));
    Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
}

async fn watch_loop(
    mut client: Client,
    settings: EtcdSettings,
    members: Arc<watch::Sender<Members>>,
    mut revision: i64,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = follow(&mut client, &settings.prefix, &members, &mut revision).await;
        if let Err(e) = result {
            tracing::error!(
                "lost the membership watch on etcd at {}: {e}; keeping the last known {} worker(s) and retrying in {backoff:?}",
                settings.display(),
                members.borrow().len()
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        match load_snapshot(&mut client, &settings, &members).await {
            Ok(rev) => {
                revision = rev;
                backoff = Duration::from_millis(200);
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
}

async fn follow(
    client: &mut Client,
    prefix: &str,
    members: &watch::Sender<Members>,
    revision: &mut i64,
) -> Result<(), String> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*revision + 1);
    let mut stream = client
        .watch(prefix, Some(options))
        .await
        .map_err(|e| e.to_string())?;
    let mut current: BTreeMap<String, WorkerInfo> = members
        .borrow()
        .iter()
        .map(|w| (w.id.clone(), w.clone()))
        .collect();
    loop {
        let Some(resp) = stream.message().await.map_err(|e| e.to_string())? else {
            return Err("watch stream ended".to_string());
        };
        if resp.canceled() {
            return Err(format!("watch cancelled by etcd: {}", resp.cancel_reason()));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *revision = (*revision).max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let id = key.trim_start_matches(prefix).to_string();
            match event.event_type() {
                EventType::Put => match serde_json::from_slice::<WorkerInfo>(kv.value()) {
                    Ok(w) => {
                        if w.draining {
                            tracing::info!(worker = %w.id, address = %w.address, "worker draining: no new tasks go there");
                        } else if !current.contains_key(&id) {
                            tracing::info!(worker = %w.id, address = %w.address, "worker joined");
                        }
                        current.insert(id, w);
                    }
                    Err(e) => tracing::warn!(%key, "ignoring malformed worker registration: {e}"),
                },
                EventType::Delete => {
                    if current.remove(&id).is_some() {
                        tracing::info!(worker = %id, "worker left (lease revoked or expired)");
                    }
                }
            }
        }
        members.send_replace(sorted(current.values().cloned().collect()));
    }
}

struct EtcdRegistration {
    client: Client,
    settings: EtcdSettings,
    /// What is registered; the keep-alive re-registers the latest value.
    info: Arc<Mutex<WorkerInfo>>,
    lease: Arc<Mutex<i64>>,
    /// Why the keep-alive is failing, while it is.
    trouble: Arc<Mutex<Option<String>>>,
    /// The registration's epoch ([`WorkerInfo::epoch`]).
    epoch: Arc<watch::Sender<u64>>,
    /// Stops the keep-alive thread (on drop or revoke).
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl std::fmt::Debug for EtcdRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistration")
            .field("lease", &*self.lease.lock())
            .finish_non_exhaustive()
    }
}

impl EtcdRegistration {
    fn stop_keepalive(&self) {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        self.stop_keepalive();
    }
}

#[async_trait::async_trait]
impl Registration for EtcdRegistration {
    async fn revoke(&self) -> Result<(), RegistryError> {
        self.stop_keepalive();
        let lease = *self.lease.lock();
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| RegistryError::Operation {
                endpoints: self.settings.display(),
                operation: "revoking the worker lease",
                message: e.to_string(),
            })?;
        Ok(())
    }

    async fn set_draining(&self) -> Result<(), RegistryError> {
        let info = {
            let mut info = self.info.lock();
            info.draining = true;
            info.clone()
        };
        let lease = *self.lease.lock();
        put_registration(&mut self.client.clone(), &self.settings, &info, lease).await
    }

    fn health(&self) -> Result<(), String> {
        match &*self.trouble.lock() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    fn epochs(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }
}

async fn put_with_new_lease(
    client: &mut Client,
    settings: &EtcdSettings,
    info: &WorkerInfo,
) -> Result<i64, RegistryError> {
    let op_err = |operation: &'static str| {
        let endpoints = settings.display();
        move |e: etcd_client::Error| RegistryError::Operation {
            endpoints,
            operation,
            message: e.to_string(),
        }
    };
    let lease = client
        .lease_grant(settings.lease_ttl_secs, None)
        .await
        .map_err(op_err("granting a lease"))?
        .id();
    put_registration(client, settings, info, lease).await?;
    Ok(lease)
}

/// Writes the worker's key under `lease`.
async fn put_registration(
    client: &mut Client,
    settings: &EtcdSettings,
    info: &WorkerInfo,
    lease: i64,
) -> Result<(), RegistryError> {
    let value = serde_json::to_vec(info).map_err(|e| RegistryError::Operation {
        endpoints: settings.display(),
        operation: "encoding the registration",
        message: e.to_string(),
    })?;
    client
        .put(
            format!("{}{}", settings.prefix, info.id),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(|e| RegistryError::Operation {
            endpoints: settings.display(),
            operation: "registering the worker",
            message: e.to_string(),
        })?;
    Ok(())
}

/// Starts the keep-alive thread of a registration; it ends when `stop`
/// fires or its sender is dropped.
fn spawn_keepalive(
    settings: EtcdSettings,
    info: Arc<Mutex<WorkerInfo>>,
    lease: Arc<Mutex<i64>>,
    trouble: Arc<Mutex<Option<String>>>,
    epoch: Arc<watch::Sender<u64>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("weft-etcd-lease".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = stop => {}
                    _ = keepalive_loop(settings, info, lease, trouble, epoch) => {}
                }
            })
        })?;
    Ok(())
}

async fn keepalive_loop(
    settings: EtcdSettings,
    info: Arc<Mutex<WorkerInfo>>,
    lease: Arc<Mutex<i64>>,
    trouble: Arc<Mutex<Option<String>>>,
    epoch: Arc<watch::Sender<u64>>,
) {
    use crate::telemetry::catalog::{LEASE_FAILURES, LEASE_RENEWALS};
    // This runtime's own connection (a client's channel lives on the
    // runtime that created it).
    let worker = info.lock().id.clone();
    let mut backoff = Duration::from_millis(200);
    let mut client = loop {
        match connect_once(&settings).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(%worker, "lease keep-alive: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let period = Duration::from_millis((settings.lease_ttl_secs.max(1) as u64 * 1000) / 3);
    loop {
        let id = *lease.lock();
        let result: Result<(), String> = async {
            let (mut keeper, mut stream) = client
                .lease_keep_alive(id)
                .await
                .map_err(|e| e.to_string())?;
            // A renewal that etcd does not answer within the TTL (packets
            // dropped, etcd paused) counts as failed: the lease is gone by then.
            let ttl = Duration::from_secs(settings.lease_ttl_secs.max(1) as u64);
            loop {
                let answer = tokio::time::timeout(ttl, async {
                    keeper.keep_alive().await.map_err(|e| e.to_string())?;
                    stream.message().await.map_err(|e| e.to_string())
                })
                .await
                .map_err(|_| format!("etcd did not answer a keep-alive within {ttl:?}"))??;
                match answer {
                    Some(resp) if resp.ttl() > 0 => {
                        metrics::counter!(LEASE_RENEWALS.name).increment(1);
                        trouble.lock().take();
                    }
                    _ => return Err("lease expired".to_string()),
                }
                tokio::time::sleep(period).await;
            }
        }
        .await;
        if let Err(e) = result {
            metrics::counter!(LEASE_FAILURES.name).increment(1);
            *trouble.lock() = Some(format!(
                "the etcd lease at {} cannot be renewed ({e}); re-registering",
                settings.display()
            ));
            tracing::error!(
                %worker,
                "keeping the registration alive in etcd at {} failed: {e}; re-registering",
                settings.display()
            );
        }
        // Once etcd answers again: a lease that is still alive (etcd
        // restarted, a renewal lost) is kept; a lease that is gone means
        // the worker was out of the membership for a while, so it
        // registers under a fresh lease as the next epoch.
        let mut backoff = Duration::from_millis(200);
        let mut lost = false;
        loop {
            let old = *lease.lock();
            if !lost {
                match client.lease_time_to_live(old, None).await {
                    Ok(resp) if resp.ttl() > 0 => {
                        let current = info.lock().clone();
                        match put_registration(&mut client, &settings, &current, old).await {
                            Ok(()) => {
                                tracing::info!(%worker, "the etcd lease outlived the interruption; registration kept");
                                break;
                            }
                            Err(e) => tracing::error!(%worker, "{e}; retrying in {backoff:?}"),
                        }
                    }
                    Ok(_) => lost = true,
                    Err(e) => tracing::error!(
                        %worker,
                        "asking etcd at {} about the lease: {e}; retrying in {backoff:?}",
                        settings.display()
                    ),
                }
            }
            if lost {
                let next = {
                    let mut info = info.lock();
                    info.epoch = epoch.borrow().saturating_add(1);
                    info.clone()
                };
                match put_with_new_lease(&mut client, &settings, &next).await {
                    Ok(new_id) => {
                        *lease.lock() = new_id;
                        tracing::warn!(
                            %worker,
                            epoch = next.epoch,
                            "the etcd lease had expired: registered again as epoch {}; the tasks of the earlier epoch are dropped",
                            next.epoch
                        );
                        epoch.send_replace(next.epoch);
                        break;
                    }
                    Err(e) => tracing::error!(%worker, "{e}; retrying in {backoff:?}"),
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, info: WorkerInfo) -> Result<Box<dyn Registration>, RegistryError> {
        let mut client = self.client.clone();
        let lease_id = put_with_new_lease(&mut client, &self.settings, &info).await?;
        let lease = Arc::new(Mutex::new(lease_id));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let trouble = Arc::new(Mutex::new(None));
        let epoch = Arc::new(watch::channel(info.epoch).0);
        let info = Arc::new(Mutex::new(info));
        spawn_keepalive(
            self.settings.clone(),
            Arc::clone(&info),
            Arc::clone(&lease),
            Arc::clone(&trouble),
            Arc::clone(&epoch),
            stopped,
        )
        .map_err(|e| RegistryError::Operation {
            endpoints: self.settings.display(),
            operation: "starting the lease keep-alive thread",
            message: e.to_string(),
        })?;
        Ok(Box::new(EtcdRegistration {
            client,
            settings: self.settings.clone(),
            info,
            lease,
            trouble,
            epoch,
            stop: Mutex::new(Some(stop)),
        }))
    }

    fn members(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }

    async fn current(&self) -> Result<Members, RegistryError> {
        let mut client = self.client.clone();
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        load_snapshot(&mut client, &self.settings, &tx).await?;
        let members = Arc::clone(&rx.borrow());
        Ok(members)
    }

    async fn health(&self) -> Result<(), String> {
        let mut client = self.client.clone();
        match tokio::time::timeout(Duration::from_secs(2), client.status()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "etcd at {} does not answer: {e}",
                self.settings.display()
            )),
            Err(_) => Err(format!(
                "etcd at {} did not answer within 2s",
                self.settings.display()
            )),
        }
    }
}

//! A cluster of real processes, as deployed: `weft-coordinator` and
//! `weft-worker` binaries on their own loopback addresses (127.0.0.1 for the
//! coordinator, 127.0.0.2, 127.0.0.3, ... for workers, standing in for
//! hosts), registered in the test etcd (`WEFT_TEST_ETCD`). Every process is
//! killed when the cluster is dropped; their output is kept in files and
//! shown when a start fails.
//!
//! The binaries come from the same target directory as the test
//! (`scripts/test.sh` builds them before the tests).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `weft passwd --file FILE USER`, the password on standard input; panics
/// when it fails or echoes the password.
pub fn weft_passwd(file: &Path, user: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(binary("weft").expect("weft"))
        .args(["passwd", "--file"])
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weft passwd");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write password");
    let out = child.wait_with_output().expect("weft passwd");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft passwd: {text}");
    assert!(!text.contains(password), "{text}");
}

/// Path of a workspace binary built next to the running test.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // A test runs from target/<profile>/deps/, a bench binary from
    // target/<profile>/: the binaries sit in target/<profile>/.
    let here = exe.parent().ok_or_else(|| {
        anyhow::anyhow!("cannot locate the target directory from {}", exe.display())
    })?;
    let candidates = [Some(here.join(name)), here.parent().map(|p| p.join(name))];
    candidates
        .iter()
        .flatten()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is missing next to {}: build the binaries first (cargo build --workspace --bins; scripts/test.sh does)",
                exe.display()
            )
        })
}

/// A free TCP port on `ip` (bound and released).
pub fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(TcpListener::bind(format!("{ip}:0"))?.local_addr()?.port())
}

/// One child process with its log file.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// Flight address (`host:port`).
    pub flight: SocketAddr,
    /// `/metrics` `/healthz` `/readyz` address.
    pub http: SocketAddr,
}

impl Node {
    /// The last lines of the node's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits up to `timeout` for the process to exit; its exit status.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not exit within {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, ...) with kill(1).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(
            status.success(),
            "kill -{signal} {} failed",
            self.child.id()
        );
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a process cluster.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// Catalog file text (TOML).
    pub catalogs: String,
    pub slots: u32,
    /// Extra environment of every process.
    pub env: Vec<(String, String)>,
    /// Extra arguments of every process.
    pub args: Vec<String>,
    /// etcd endpoint; `None` = the test etcd (`WEFT_TEST_ETCD`).
    pub etcd: Option<String>,
    /// Serve `/metrics` `/healthz` `/readyz` (`--http-listen`); without it
    /// (`--http-listen none`: no metrics recorded) readiness is read from
    /// the nodes' start-up lines and the coordinator's worker list.
    pub http: bool,
    /// User and password the harness signs in with for its own queries
    /// (a coordinator with a password file); `None` = no sign-in.
    pub sign_in: Option<(String, String)>,
    /// The coordinator serves TLS: clients verify it with this CA file.
    pub tls_ca: Option<PathBuf>,
}

/// Coordinator and workers as separate processes.
#[derive(Debug)]
pub struct ProcessCluster {
    pub coordinator: Node,
    pub workers: Vec<Node>,
    pub dir: tempfile::TempDir,
    etcd: String,
    prefix: String,
    options: ProcessOptions,
    /// Workers removed with [`ProcessCluster::remove_worker`]: new ones
    /// take the next loopback addresses, never a removed one's.
    retired: usize,
}

impl ProcessCluster {
    /// Starts the coordinator, then `workers` workers; returns once the
    /// coordinator's `/readyz` answers 200 (etcd reachable, workers live).
    pub async fn start(workers: usize, options: ProcessOptions) -> anyhow::Result<Self> {
        let etcd = match &options.etcd {
            Some(e) => e.clone(),
            None => std::env::var(crate::TEST_ETCD_ENV).map_err(|_| {
                anyhow::anyhow!(
                    "{} is not set: run the tests with scripts/test.sh",
                    crate::TEST_ETCD_ENV
                )
            })?,
        };
        let dir = tempfile::Builder::new().prefix("weft-procs-").tempdir()?;
        std::fs::write(dir.path().join("catalogs.toml"), &options.catalogs)?;
        let prefix = format!("/weft-test/{}/workers/", uuid::Uuid::new_v4().simple());
        let coordinator = start_coordinator(dir.path(), &etcd, &prefix, &options, "coordinator")?;
        let mut cluster = Self {
            coordinator,
            workers: Vec::new(),
            dir,
            etcd,
            prefix,
            options,
            retired: 0,
        };
        cluster.wait_http(&cluster.coordinator, "/healthz").await?;
        for _ in 0..workers {
            cluster.add_worker().await?;
        }
        if workers > 0 {
            cluster.wait_ready(&cluster.coordinator).await?;
            cluster.wait_members().await?;
        }
        Ok(cluster)
    }

    /// Waits until the coordinator schedules on every started worker
    /// (`system.runtime.workers` lists them all).
    pub async fn wait_members(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let want = self.workers.len().to_string();
        loop {
            let sql = "SELECT count(*) AS n FROM system.runtime.workers";
            let seen = match self.client().await {
                Ok(mut c) => crate::run_sql(&mut c, sql)
                    .await
                    .ok()
                    .and_then(|b| crate::canonical_rows(&b).first().cloned()),
                Err(_) => None,
            };
            if seen.as_deref() == Some(want.as_str()) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the coordinator lists {seen:?} workers, not {want}:\n{}",
                    self.coordinator.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts one more worker on the next loopback address; waits until its
    /// `/readyz` answers 200.
    pub async fn add_worker(&mut self) -> anyhow::Result<usize> {
        let args = self.options.args.clone();
        self.add_worker_with(&args).await
    }

    /// [`ProcessCluster::add_worker`] with `args` instead of the cluster's
    /// extra arguments.
    pub async fn add_worker_with(&mut self, args: &[String]) -> anyhow::Result<usize> {
        let i = self.workers.len();
        let ip = format!("127.0.0.{}", i + self.retired + 2);
        let flight: SocketAddr = format!("{ip}:{}", free_port(&ip)?).parse()?;
        let http: SocketAddr = format!("{ip}:{}", free_port(&ip)?).parse()?;
        let name = format!("worker{}", i + self.retired);
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(binary("weft-worker")?);
        cmd.arg("--listen")
            .arg(flight.to_string())
            .arg("--http-listen")
            .arg(http_flag(&self.options, http))
            .arg("--etcd")
            .arg(&self.etcd)
            .arg("--etcd-prefix")
            .arg(&self.prefix)
            .arg("--catalogs")
            .arg(self.dir.path().join("catalogs.toml"))
            .arg("--slots")
            .arg(self.options.slots.to_string())
            .arg("--lease-ttl")
            .arg("3")
            .args(args);
        let node = spawn_node(cmd, &self.options.env, name, log, flight, http)?;
        self.workers.push(node);
        // A worker that exits (refused to start or to join) fails at once,
        // not after the readiness deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.workers[i].child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.workers[i].name,
                    self.workers[i].log_tail()
                );
            }
            let ready = self.wait_ready(&self.workers[i]);
            match tokio::time::timeout(Duration::from_millis(500), ready).await {
                Ok(result) => return result.map(|()| i),
                Err(_) if tokio::time::Instant::now() < deadline => {}
                Err(_) => anyhow::bail!(
                    "{} did not become ready:\n{}",
                    self.workers[i].name,
                    self.workers[i].log_tail()
                ),
            }
        }
    }

    /// Starts one more coordinator, named `name`, on the same etcd and
    /// membership as the first (they share the workers); waits until it is
    /// ready. Read it with [`ProcessCluster::client_of`].
    pub async fn add_coordinator(&self, name: &str) -> anyhow::Result<Node> {
        let node = start_coordinator(
            self.dir.path(),
            &self.etcd,
            &self.prefix,
            &self.options,
            name,
        )?;
        self.wait_ready(&node).await?;
        Ok(node)
    }

    /// A Flight SQL client of `coordinator` (one of this cluster's), signed
    /// in like [`ProcessCluster::client`].
    pub async fn client_of(
        &self,
        coordinator: &Node,
    ) -> anyhow::Result<arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>>
    {
        let url = self.url_of(coordinator);
        let mut client = match &self.options.tls_ca {
            Some(ca) => crate::connect_tls(&url, ca).await?,
            None => crate::connect(&url).await?,
        };
        if let Some((user, password)) = &self.options.sign_in {
            client.handshake(user, password).await?;
        }
        Ok(client)
    }

    /// Takes worker `i` out of the cluster's list (after it was killed or
    /// stopped): [`ProcessCluster::wait_members`] then waits for the others
    /// only. Its process is killed if it still runs.
    pub fn remove_worker(&mut self, i: usize) -> Node {
        let mut node = self.workers.remove(i);
        let _ = node.child.kill();
        let _ = node.child.wait();
        self.retired += 1;
        node
    }

    /// Starts a worker with `args` that must fail to join the cluster (it
    /// exits non-zero before it is ready); its log.
    pub async fn refused_worker(&mut self, args: &[String]) -> anyhow::Result<String> {
        let refused = match self.add_worker_with(args).await {
            Ok(i) => anyhow::bail!("{} joined the cluster", self.workers[i].name),
            Err(e) => e,
        };
        let mut node = self.workers.pop().expect("the refused worker's process");
        let status = node.wait_exit(Duration::from_secs(10)).await?;
        anyhow::ensure!(
            !status.success(),
            "{} exited with success: {refused:#}",
            node.name
        );
        Ok(std::fs::read_to_string(&node.log)?)
    }

    /// A Flight SQL client of the coordinator, signed in as
    /// [`ProcessOptions::sign_in`] says.
    pub async fn client(
        &self,
    ) -> anyhow::Result<arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>>
    {
        self.client_of(&self.coordinator).await
    }

    /// `grpc`-style URL of the coordinator for Flight SQL clients (`http://`).
    pub fn flight_url(&self) -> String {
        self.url_of(&self.coordinator)
    }

    /// The Flight SQL URL of one of this cluster's coordinators.
    fn url_of(&self, coordinator: &Node) -> String {
        let scheme = if self.options.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", coordinator.flight)
    }

    async fn wait_http(&self, node: &Node, path: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        if !self.options.http {
            return self.wait_started(node, path, deadline).await;
        }
        loop {
            match http_get(node.http, path).await {
                Ok((200, _)) => return Ok(()),
                Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {}
                Ok((status, body)) => anyhow::bail!(
                    "{} answered {status} on {path}: {body}\n--- {} log ---\n{}",
                    node.name,
                    node.name,
                    node.log_tail()
                ),
                Err(e) => anyhow::bail!(
                    "{} does not answer on {path}: {e}\n--- {} log ---\n{}",
                    node.name,
                    node.name,
                    node.log_tail()
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Without HTTP: a node has started when it printed its serving line;
    /// the coordinator is ready when it lists every worker.
    async fn wait_started(
        &self,
        node: &Node,
        path: &str,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        loop {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let started = log.contains("serving Flight");
            let ready = if started && path == "/readyz" && node.name == "coordinator" {
                let sql = "SELECT count(*) AS n FROM system.runtime.workers";
                match self.client().await {
                    Ok(mut c) => {
                        crate::run_sql(&mut c, sql)
                            .await
                            .ok()
                            .and_then(|b| crate::canonical_rows(&b).first().cloned())
                            == Some(self.workers.len().to_string())
                    }
                    Err(_) => false,
                }
            } else {
                started
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("{} did not start:\n{}", node.name, node.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `node`'s `/readyz` answers 200.
    pub async fn wait_ready(&self, node: &Node) -> anyhow::Result<()> {
        self.wait_http(node, "/readyz").await
    }
}

fn start_coordinator(
    dir: &Path,
    etcd: &str,
    prefix: &str,
    options: &ProcessOptions,
    name: &str,
) -> anyhow::Result<Node> {
    let flight: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")?).parse()?;
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")?).parse()?;
    let mut cmd = Command::new(binary("weft-coordinator")?);
    cmd.arg("--listen")
        .arg(flight.to_string())
        .arg("--http-listen")
        .arg(http_flag(options, http))
        .arg("--etcd")
        .arg(etcd)
        .arg("--etcd-prefix")
        .arg(prefix)
        .arg("--catalogs")
        .arg(dir.join("catalogs.toml"))
        .args(&options.args);
    spawn_node(
        cmd,
        &options.env,
        name.to_string(),
        dir.join(format!("{name}.log")),
        flight,
        http,
    )
}

fn http_flag(options: &ProcessOptions, http: SocketAddr) -> String {
    if options.http {
        http.to_string()
    } else {
        "none".to_string()
    }
}

/// Starts `cmd` with `env` added, its output in `log`.
pub fn spawn_node(
    mut cmd: Command,
    env: &[(String, String)],
    name: String,
    log: PathBuf,
    flight: SocketAddr,
    http: SocketAddr,
) -> anyhow::Result<Node> {
    let out = std::fs::File::create(&log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {name} ({cmd:?}): {e}"))?;
    Ok(Node {
        name,
        child,
        log,
        flight,
        http,
    })
}

/// A private etcd (the `etcd` binary on PATH) on free 127.0.0.1 ports with
/// its data in a temporary directory; killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    /// How it was started, to start it again on the same ports and data.
    command: Vec<std::ffi::OsString>,
    health: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// etcd serving clients over TLS only, with client certificates
    /// required (signed by `tls`'s CA).
    pub async fn start_tls(tls: &TlsFiles) -> anyhow::Result<Self> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<&TlsFiles>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weft-etcd-").tempdir()?;
        let (client, peer, health) = (
            free_port("127.0.0.1")?,
            free_port("127.0.0.1")?,
            free_port("127.0.0.1")?,
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let health_url = format!("http://127.0.0.1:{health}");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "weft"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("weft={peer_url}")])
            // /health over plain HTTP whatever the client port speaks.
            .args(["--listen-metrics-urls", &health_url])
            .args(["--log-level", "error"]);
        if let Some(tls) = tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let command: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut etcd = Self {
            child: spawn_etcd(&command)?,
            endpoint,
            command,
            health: format!("127.0.0.1:{health}").parse()?,
            _dir: dir,
        };
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    /// Stops etcd (SIGKILL: as abrupt as a crash); its data stays.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.child = spawn_etcd(&self.command)?;
        self.wait_healthy().await
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(self.health, "/health").await, Ok((200, _))) {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "etcd did not start");
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("etcd exited ({status})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

fn spawn_etcd(args: &[std::ffi::OsString]) -> anyhow::Result<Child> {
    Command::new("etcd")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start etcd ({e}): apt-get install etcd-server"))
}

/// A throwaway CA with a server certificate for 127.0.0.1 and a client
/// certificate, made with the `openssl` command (PEM files in a temporary
/// directory).
#[derive(Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFiles {
    pub fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weft-tls-").tempdir()?;
        let p = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=weft-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        for (name, cn, ext) in [
            (
                "server",
                "etcd",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "weft-node", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(p(&format!("{name}.ext")), ext)?;
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ])?;
        }
        Ok(Self {
            ca: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            _dir: dir,
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET (no client library needed); returns status and body.
pub async fn http_get(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<(u16, String)> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .map_err(|_| anyhow::anyhow!("GET http://{addr}{path_and_query} timed out"))??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP answer from {addr}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in the answer from {addr}: {head}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Percent-encodes a query-string value.
pub fn url_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

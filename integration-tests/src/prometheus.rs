//! A real Prometheus server for tests (Debian's `prometheus`, installed by
//! `scripts/test.sh`): private port, temporary storage, a generated scrape
//! configuration scraping every second, and the HTTP query API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, http_get, url_encode};

/// A running Prometheus; killed when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// One sample of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

impl Prometheus {
    /// Starts Prometheus scraping `jobs` (job name, targets) every second and
    /// evaluating `rule_files`.
    pub async fn start(
        jobs: &[(&str, Vec<SocketAddr>)],
        rule_files: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("weft-prom-").tempdir()?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        if !rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for f in rule_files {
                config.push_str(&format!("  - {:?}\n", f.to_string_lossy()));
            }
        }
        config.push_str("scrape_configs:\n");
        for (job, targets) in jobs {
            let targets: Vec<String> = targets
                .iter()
                .map(|t| format!("{:?}", t.to_string()))
                .collect();
            config.push_str(&format!(
                "  - job_name: {job:?}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &config)?;
        let port = free_port("127.0.0.1")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start prometheus ({e}): install it (apt-get install prometheus; scripts/test.sh does)"
                )
            })?;
        let prometheus = Self { child, addr, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready").await {
                return Ok(prometheus);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("prometheus did not become ready:\n{}", prometheus.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Prometheus' own output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Evaluates `promql` now; the JSON `data` of a successful answer, or
    /// the error Prometheus gives.
    pub async fn query_raw(&self, promql: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )
        .await?;
        let value: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            anyhow::anyhow!("prometheus answered {status} with non-JSON ({e}): {body}")
        })?;
        if value["status"] != "success" {
            anyhow::bail!(
                "prometheus rejected `{promql}`: {} {}",
                value["errorType"],
                value["error"]
            );
        }
        Ok(value["data"].clone())
    }

    /// Evaluates `promql` (an instant vector) now.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let data = self.query_raw(promql).await?;
        let mut out = Vec::new();
        for r in data["result"].as_array().cloned().unwrap_or_default() {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            out.push((labels, value));
        }
        Ok(out)
    }

    /// The single value of a scalar-like query (`sum(...)`), or `None` when empty.
    pub async fn value(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        Ok(self.query(promql).await?.first().map(|(_, v)| *v))
    }

    /// Polls `promql` until `accept` holds for its value (scrapes lag the
    /// events by up to a few seconds); returns the last value either way.
    pub async fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(Option<f64>) -> bool,
    ) -> anyhow::Result<Option<f64>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.value(promql).await?;
            if accept(v) || tokio::time::Instant::now() > deadline {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

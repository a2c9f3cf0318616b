//! Pods of the Helm chart (`helm/weft`) as local processes.
//!
//! [`render`] renders the chart with real Helm (`helm/weft/tests/render.py`,
//! PyPI `helm-python-sdk`) into Kubernetes objects; [`PodTemplate::from_deployment`]
//! takes a rendered Deployment's container (command, args, env, mounts) and
//! [`PodTemplate::spawn`] runs it as a process the way a kubelet would, on its
//! own loopback address standing in for the pod IP:
//! - `env` values, `fieldRef` (`status.podIP` = the loopback address,
//!   `metadata.name`, `metadata.namespace`), `secretKeyRef` / `envFrom`
//!   secrets from [`Secrets`] (the test plays the cluster's Secret store),
//!   `configMapKeyRef` / `envFrom` config maps from the rendered ConfigMaps;
//! - `$(VAR)` in args expanded from the container's env (kubelet semantics);
//! - volumes: a `configMap` is written to a directory (its keys as files, or
//!   its `items`), an `emptyDir` or a `persistentVolumeClaim` is an empty
//!   directory, a `hostPath` is the
//!   path itself, a `secret` comes from [`Secrets`]; every arg and env value
//!   under a `mountPath` is pointed at that directory;
//! - a pod has its own network namespace, so a wildcard listen address
//!   (`0.0.0.0:PORT`) is the pod's address here;
//! - [`Pod::terminate`] is the kubelet's graceful stop: the `preStop` sleep,
//!   SIGTERM, SIGKILL after `terminationGracePeriodSeconds`.
//!
//! Nothing is rewritten beyond these rules, so a flag the chart gets wrong
//! fails here as it would in a cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::process::{binary, spawn_node, Node};

/// The chart's directory in this repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/weft")
}

/// Renders the chart with `values_files` (in order) as release `release`;
/// the rendered objects in template order.
pub fn render(values_files: &[&Path], release: &str) -> anyhow::Result<Vec<Value>> {
    let script = chart_dir().join("tests/render.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script);
    for f in values_files {
        cmd.arg("-f").arg(f);
    }
    cmd.arg("--name").arg(release);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "rendering the chart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let objects: Vec<Value> =
        serde_json::from_slice(&out.stdout).context("render.py printed no JSON array")?;
    Ok(objects)
}

/// Objects of `kind` in a rendering.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The Deployment whose `app.kubernetes.io/component` label is `component`.
pub fn deployment<'a>(objects: &'a [Value], component: &str) -> anyhow::Result<&'a Value> {
    of_kind(objects, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == component)
        .ok_or_else(|| anyhow!("the rendering has no {component} Deployment"))
}

/// Secrets the test provides, as the cluster's Secret store would: secret
/// name -> key -> value.
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// One container of a rendered pod template, ready to run as processes.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    /// Deployment name.
    pub name: String,
    pub binary: String,
    args: Vec<String>,
    env: Vec<Value>,
    env_from: Vec<Value>,
    mounts: Vec<Value>,
    volumes: Vec<Value>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Secrets the chart itself renders (its generated cluster secret).
    rendered_secrets: Secrets,
    pub pre_stop: Duration,
    pub grace: Duration,
}

impl PodTemplate {
    /// The first container of `deployment`'s pod template.
    pub fn from_deployment(deployment: &Value, objects: &[Value]) -> anyhow::Result<Self> {
        let name = deployment["metadata"]["name"]
            .as_str()
            .unwrap_or("pod")
            .to_string();
        let spec = &deployment["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let command = strings(&container["command"]);
        let args = strings(&container["args"]);
        let (binary, args) = match command.split_first() {
            Some((first, rest)) => (
                first.clone(),
                rest.iter().cloned().chain(args).collect::<Vec<_>>(),
            ),
            None => bail!("{name}: the container has no command (the image has no entrypoint)"),
        };
        let binary = Path::new(&binary)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let config_maps = of_kind(objects, "ConfigMap")
            .into_iter()
            .map(|cm| {
                let data = cm["data"]
                    .as_object()
                    .map(|d| {
                        d.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    cm["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    data,
                )
            })
            .collect();
        let mut rendered_secrets = Secrets::new();
        for secret in of_kind(objects, "Secret") {
            use base64::Engine as _;
            let mut data = BTreeMap::new();
            for (k, v) in secret["data"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .map_err(|e| anyhow!("{name}: rendered Secret key {k} is not base64: {e}"))?;
                data.insert(k.clone(), String::from_utf8_lossy(&bytes).to_string());
            }
            for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
                data.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
            let secret_name = secret["metadata"]["name"].as_str().unwrap_or_default();
            rendered_secrets.insert(secret_name.to_string(), data);
        }
        let seconds = |v: &Value| Duration::from_secs(v.as_u64().unwrap_or(0));
        Ok(Self {
            name,
            binary,
            args,
            env: array(&container["env"]),
            env_from: array(&container["envFrom"]),
            mounts: array(&container["volumeMounts"]),
            volumes: array(&spec["volumes"]),
            config_maps,
            rendered_secrets,
            pre_stop: seconds(&container["lifecycle"]["preStop"]["sleep"]["seconds"]),
            grace: match spec["terminationGracePeriodSeconds"].as_u64() {
                Some(s) => Duration::from_secs(s),
                None => Duration::from_secs(30),
            },
        })
    }

    /// The value of `--flag` (`--flag VALUE` or `--flag=VALUE`) in the
    /// rendered args, before expansion.
    pub fn flag(&self, flag: &str) -> Option<String> {
        flag_value(&self.args, flag)
    }

    /// The container's argv with `$(VAR)` expanded and volumes mapped, as it
    /// would run on pod address `ip` with files under `dir`.
    pub fn resolve(&self, ip: &str, dir: &Path, secrets: &Secrets) -> anyhow::Result<Resolved> {
        std::fs::create_dir_all(dir)?;
        let pod = format!("{}-{}", self.name, ip.replace('.', "-"));
        // Volumes -> local directories.
        let mut volume_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in &self.volumes {
            let vname = v["name"].as_str().unwrap_or_default().to_string();
            let local = dir.join("volumes").join(&vname);
            if let Some(path) = v["hostPath"]["path"].as_str() {
                volume_dirs.insert(vname, PathBuf::from(path));
                continue;
            }
            std::fs::create_dir_all(&local)?;
            let files: BTreeMap<String, String> = if v.get("configMap").is_some() {
                let cm = v["configMap"]["name"].as_str().unwrap_or_default();
                self.config_maps.get(cm).cloned().ok_or_else(|| {
                    anyhow!(
                        "{}: volume {vname} names ConfigMap {cm}, which the chart does not render",
                        self.name
                    )
                })?
            } else if v.get("secret").is_some() {
                let s = v["secret"]["secretName"].as_str().unwrap_or_default();
                secrets.get(s).or(self.rendered_secrets.get(s)).cloned().ok_or_else(|| {
                    anyhow!(
                        "{}: volume {vname} names Secret {s}, which neither the test nor the chart provides",
                        self.name
                    )
                })?
            } else if v.get("emptyDir").is_some() || v.get("persistentVolumeClaim").is_some() {
                // A claim is a directory that starts empty here.
                BTreeMap::new()
            } else {
                bail!(
                    "{}: volume {vname} has a kind this harness does not emulate: {v}",
                    self.name
                );
            };
            let items = array(&v["configMap"]["items"])
                .into_iter()
                .chain(array(&v["secret"]["items"]))
                .collect::<Vec<_>>();
            if items.is_empty() {
                for (k, text) in &files {
                    std::fs::write(local.join(k), text)?;
                }
            } else {
                for item in items {
                    let key = item["key"].as_str().unwrap_or_default();
                    let path = item["path"].as_str().unwrap_or(key);
                    let text = files
                        .get(key)
                        .ok_or_else(|| anyhow!("{}: volume {vname} has no key {key}", self.name))?;
                    let target = local.join(path);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(target, text)?;
                }
            }
            volume_dirs.insert(vname, local);
        }
        // Mount paths -> local paths, longest first.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in &self.mounts {
            let vname = m["name"].as_str().unwrap_or_default();
            let base = volume_dirs
                .get(vname)
                .ok_or_else(|| anyhow!("{}: mount of unknown volume {vname}", self.name))?;
            let local = match m["subPath"].as_str() {
                Some(sub) => base.join(sub),
                None => base.clone(),
            };
            mounts.push((
                m["mountPath"].as_str().unwrap_or_default().to_string(),
                local,
            ));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let map_path = |value: &str| -> String {
            for (mount, local) in &mounts {
                if value == mount {
                    return local.to_string_lossy().to_string();
                }
                if let Some(rest) = value.strip_prefix(&format!("{mount}/")) {
                    return local.join(rest).to_string_lossy().to_string();
                }
            }
            value.to_string()
        };
        // Environment, in order (later entries may use earlier ones).
        let mut env: Vec<(String, String)> = Vec::new();
        for from in &self.env_from {
            let data = if let Some(s) = from["secretRef"]["name"].as_str() {
                match secrets.get(s) {
                    Some(d) => d.clone(),
                    None if from["secretRef"]["optional"] == true => BTreeMap::new(),
                    None => bail!(
                        "{}: envFrom names Secret {s}, which the test does not provide",
                        self.name
                    ),
                }
            } else if let Some(c) = from["configMapRef"]["name"].as_str() {
                self.config_maps.get(c).cloned().unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            let prefix = from["prefix"].as_str().unwrap_or_default();
            env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        }
        for e in &self.env {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "status.podIP" | "status.hostIP" => ip.to_string(),
                    "metadata.name" => pod.clone(),
                    "metadata.namespace" => "default".to_string(),
                    "spec.nodeName" => "node-1".to_string(),
                    other => bail!(
                        "{}: env {name} uses fieldRef {other}, not emulated",
                        self.name
                    ),
                }
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let (s, k) = (
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                );
                match secrets.get(s).and_then(|d| d.get(k)) {
                    Some(v) => v.clone(),
                    None if r.get("optional") == Some(&Value::Bool(true)) => continue,
                    None => bail!("{}: env {name} needs key {k} of Secret {s}, which the test does not provide", self.name),
                }
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                let (c, k) = (
                    r["name"].as_str().unwrap_or_default(),
                    r["key"].as_str().unwrap_or_default(),
                );
                self.config_maps
                    .get(c)
                    .and_then(|d| d.get(k))
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!("{}: env {name}: ConfigMap {c} has no key {k}", self.name)
                    })?
            } else if e.get("valueFrom").is_some() {
                bail!(
                    "{}: env {name} has a valueFrom this harness does not emulate: {e}",
                    self.name
                );
            } else {
                String::new()
            };
            env.retain(|(k, _)| k != &name);
            env.push((name, map_path(&value)));
        }
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                let a = expand(a, &env);
                // The pod's own network namespace: a wildcard address is the pod's.
                let a = a.replace("0.0.0.0:", &format!("{ip}:"));
                match a.split_once('=') {
                    Some((flag, value)) if flag.starts_with("--") => {
                        format!("{flag}={}", map_path(value))
                    }
                    _ => map_path(&a),
                }
            })
            .collect();
        Ok(Resolved {
            binary: self.binary.clone(),
            args,
            env,
            pod,
        })
    }

    /// Starts the container as a process on pod address `ip`.
    pub fn spawn(&self, ip: &str, dir: &Path, secrets: &Secrets) -> anyhow::Result<Pod> {
        let resolved = self.resolve(ip, dir, secrets)?;
        let flight = flag_value(&resolved.args, "--listen")
            .ok_or_else(|| anyhow!("{}: no --listen in the chart's args", self.name))?
            .parse::<SocketAddr>()
            .context("--listen")?;
        let http = flag_value(&resolved.args, "--http-listen")
            .ok_or_else(|| anyhow!("{}: no --http-listen in the chart's args", self.name))?
            .parse::<SocketAddr>()
            .context("--http-listen")?;
        let mut cmd = Command::new(binary(&resolved.binary)?);
        cmd.args(&resolved.args).env_clear();
        for keep in ["PATH", "HOME", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        let log = dir.join(format!("{}.log", resolved.pod));
        let node = spawn_node(cmd, &resolved.env, resolved.pod.clone(), log, flight, http)?;
        Ok(Pod {
            node,
            pre_stop: self.pre_stop,
            grace: self.grace,
        })
    }
}

/// A container's argv and environment as they would run.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub binary: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub pod: String,
}

/// A running pod.
#[derive(Debug)]
pub struct Pod {
    pub node: Node,
    pub pre_stop: Duration,
    pub grace: Duration,
}

impl Pod {
    /// What a kubelet does when the pod is deleted (scale-down): the
    /// `preStop` sleep, SIGTERM, then SIGKILL once the grace period (counted
    /// from the start, preStop included) has passed. Returns whether the
    /// process exited on its own and how long after SIGTERM.
    pub async fn terminate(&mut self) -> anyhow::Result<(bool, Duration)> {
        let start = Instant::now();
        tokio::time::sleep(self.pre_stop).await;
        self.node.signal("TERM")?;
        let term = Instant::now();
        let left = self.grace.saturating_sub(start.elapsed());
        match self.node.wait_exit(left).await {
            Ok(_) => Ok((true, term.elapsed())),
            Err(_) => {
                self.node.signal("KILL")?;
                self.node.wait_exit(Duration::from_secs(10)).await?;
                Ok((false, term.elapsed()))
            }
        }
    }
}

/// `$(VAR)` -> the value of VAR in `env`; `$$(VAR)` stays `$(VAR)`; an
/// unknown variable stays as written (kubelet semantics).
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(") {
            match t.find(')') {
                Some(end) => {
                    let name = &t[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &t[end + 1..];
                }
                None => {
                    out.push_str(tail);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The value of `--flag` in an argv (`--flag VALUE` or `--flag=VALUE`).
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            return Some(v.to_string());
        }
    }
    None
}

fn strings(v: &Value) -> Vec<String> {
    array(v)
        .iter()
        .map(|s| match s {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn array(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubelet_rules() {
        let env = vec![("POD_IP".to_string(), "10.0.0.7".to_string())];
        assert_eq!(expand("$(POD_IP):50051", &env), "10.0.0.7:50051");
        assert_eq!(expand("$$(POD_IP)", &env), "$(POD_IP)");
        assert_eq!(expand("$(NOPE)-x", &env), "$(NOPE)-x");
        assert_eq!(expand("a$b", &env), "a$b");
    }

    #[test]
    fn flags_in_both_spellings() {
        let args: Vec<String> = ["--listen", "0.0.0.0:1", "--drain-timeout=30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(flag_value(&args, "--listen").as_deref(), Some("0.0.0.0:1"));
        assert_eq!(flag_value(&args, "--drain-timeout").as_deref(), Some("30"));
        assert_eq!(flag_value(&args, "--etcd"), None);
    }
}

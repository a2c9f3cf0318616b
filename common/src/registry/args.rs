//! The etcd flags every node takes (`#[command(flatten)]` into a binary's
//! arguments), so `weft-coordinator` and `weft-worker` spell them alike.

use std::path::PathBuf;
use std::time::Duration;

use super::etcd::{EtcdAuth, EtcdSettings, EtcdTls, WORKERS_PREFIX};

/// How a node reaches etcd.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated (e.g. http://127.0.0.1:2379, or
    /// https://... with the --etcd-*-file flags).
    #[arg(long, env = "WEFT_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// etcd key prefix of this cluster's worker registrations (clusters
    /// sharing one etcd use different prefixes).
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = WORKERS_PREFIX)]
    pub etcd_prefix: String,
    /// Seconds to keep retrying etcd at startup.
    #[arg(long, env = "WEFT_ETCD_CONNECT_TIMEOUT", default_value_t = 60)]
    pub etcd_connect_timeout: u64,
    /// CA certificate (PEM) that signed etcd's server certificate (TLS).
    #[arg(long, env = "WEFT_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// This node's client certificate (PEM) for etcd client-certificate
    /// authentication; with --etcd-key-file.
    #[arg(long, env = "WEFT_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert-file.
    #[arg(long, env = "WEFT_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (etcd authentication); the password comes from the
    /// WEFT_ETCD_PASSWORD environment variable, never from the command line.
    #[arg(long, env = "WEFT_ETCD_USER")]
    pub etcd_user: Option<String>,
}

/// Environment variable holding the etcd password of `--etcd-user`.
pub const ETCD_PASSWORD_ENV: &str = "WEFT_ETCD_PASSWORD";

impl EtcdArgs {
    /// Connection settings; `Err` names the missing piece.
    pub fn settings(&self) -> Result<EtcdSettings, String> {
        let mut settings = EtcdSettings::new(self.etcd.clone());
        settings.prefix = self.etcd_prefix.clone();
        if self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some() {
            settings.tls = Some(EtcdTls {
                ca_file: self.etcd_ca_file.clone(),
                cert_file: self.etcd_cert_file.clone(),
                key_file: self.etcd_key_file.clone(),
            });
        }
        if let Some(user) = &self.etcd_user {
            let password = std::env::var(ETCD_PASSWORD_ENV).map_err(|_| {
                format!("--etcd-user {user} needs the password in the {ETCD_PASSWORD_ENV} environment variable")
            })?;
            settings.auth = Some(EtcdAuth {
                user: user.clone(),
                password,
            });
        }
        Ok(settings)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.etcd_connect_timeout)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    #[test]
    fn tls_files_and_prefix_reach_the_settings() {
        let cli = Cli::try_parse_from([
            "x",
            "--etcd",
            "https://a:2379,https://b:2379",
            "--etcd-prefix",
            "/p/",
            "--etcd-ca-file",
            "/ca.pem",
            "--etcd-cert-file",
            "/c.pem",
            "--etcd-key-file",
            "/k.pem",
        ])
        .unwrap();
        let s = cli.etcd.settings().unwrap();
        assert_eq!(s.endpoints, ["https://a:2379", "https://b:2379"]);
        assert_eq!(s.prefix, "/p/");
        let tls = s.tls.unwrap();
        assert_eq!(tls.key_file.unwrap(), PathBuf::from("/k.pem"));
        assert!(s.auth.is_none());
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let err = Cli::try_parse_from([
            "x",
            "--etcd",
            "https://a:2379",
            "--etcd-cert-file",
            "/c.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--etcd-key-file"), "{err}");
    }
}

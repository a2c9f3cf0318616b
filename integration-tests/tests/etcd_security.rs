//! etcd over TLS with client certificates, and etcd user authentication, for
//! every node (`--etcd-ca-file`, `--etcd-cert-file`, `--etcd-key-file`,
//! `--etcd-user` + `WEFT_ETCD_PASSWORD`), with real etcd servers.
//!
//! `tls_with_client_certificates`:
//! 1. Make a CA, a server certificate for 127.0.0.1 and a client certificate
//!    (openssl); start etcd serving TLS only and requiring client certificates.
//! 2. A coordinator and two workers with the three files form a cluster; a
//!    query answers as single-node DataFusion does.
//! 3. A worker with the CA but no client certificate is refused: it exits,
//!    naming etcd.
//!
//! `user_and_password`:
//! 1. Start etcd, create the root user, enable authentication.
//! 2. A coordinator and a worker with `--etcd-user root` and the password in
//!    `WEFT_ETCD_PASSWORD` form a cluster; a query answers.
//! 3. A worker with a wrong password exits naming etcd, and its output never
//!    shows the password.

use std::process::{Command, Stdio};
use std::time::Duration;

use weft_integration_tests::process::{binary, Etcd, ProcessCluster, ProcessOptions, TlsFiles};
use weft_integration_tests::{canonical_rows, connect, run_sql, single_node_rows, tpch_dir};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);
const SQL: &str =
    "SELECT l_returnflag, count(*), sum(l_quantity) FROM lineitem GROUP BY 1 ORDER BY 1";

fn catalogs() -> String {
    format!(
        "default_catalog = \"tpch\"\n[catalogs.tpch]\nkind = \"files\"\npath = \"{}\"\nformat = \"parquet\"\n",
        tpch_dir(0.01, 2).display()
    )
}

async fn answer(cluster: &ProcessCluster) -> Vec<String> {
    let mut client = connect(&cluster.flight_url()).await.expect("connect");
    canonical_rows(&run_sql(&mut client, SQL).await.expect("query"))
}

async fn expected() -> Vec<String> {
    let ctx = weft_integration_tests::tpch_single_node(tpch_dir(0.01, 2)).await;
    single_node_rows(&ctx, SQL).await
}

/// Runs a worker that must fail to join; its output.
fn failing_worker(args: &[String], env: &[(&str, &str)]) -> String {
    let out = Command::new(binary("weft-worker").expect("binary"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "none",
            "--etcd-connect-timeout",
            "2",
        ])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run weft-worker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the worker joined:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_client_certificates() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // 1.
        let tls = TlsFiles::generate().expect("certificates");
        let etcd = Etcd::start_tls(&tls).await.expect("etcd with TLS");
        assert!(etcd.endpoint.starts_with("https://"));
        let path = |p: &std::path::Path| p.to_string_lossy().to_string();
        let tls_args = vec![
            "--etcd-ca-file".to_string(),
            path(&tls.ca),
            "--etcd-cert-file".to_string(),
            path(&tls.client_cert),
            "--etcd-key-file".to_string(),
            path(&tls.client_key),
        ];
        // 2.
        let cluster = ProcessCluster::start(
            2,
            ProcessOptions {
                catalogs: catalogs(),
                slots: 1,
                env: Vec::new(),
                args: tls_args,
                etcd: Some(etcd.endpoint.clone()),
                http: true,
                sign_in: None,
                tls_ca: None,
            },
        )
        .await
        .expect("a cluster over etcd with TLS");
        assert_eq!(answer(&cluster).await, expected().await);
        // 3.
        let catalogs_file = cluster.dir.path().join("catalogs.toml");
        let text = failing_worker(
            &[
                "--etcd".to_string(),
                etcd.endpoint.clone(),
                "--etcd-ca-file".to_string(),
                path(&tls.ca),
                "--catalogs".to_string(),
                path(&catalogs_file),
            ],
            &[],
        );
        assert!(text.contains("etcd"), "{text}");
    })
    .await
    .expect("the test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_and_password() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // 1.
        let etcd = Etcd::start().await.expect("etcd");
        let password = "s3cret-etcd-pw";
        let mut admin = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .expect("etcd client");
        admin
            .user_add("root", password, None)
            .await
            .expect("user add");
        admin.user_grant_role("root", "root").await.expect("grant");
        admin.auth_enable().await.expect("auth enable");
        // 2.
        let cluster = ProcessCluster::start(
            1,
            ProcessOptions {
                catalogs: catalogs(),
                slots: 2,
                env: vec![("WEFT_ETCD_PASSWORD".into(), password.into())],
                args: vec!["--etcd-user".into(), "root".into()],
                etcd: Some(etcd.endpoint.clone()),
                http: true,
                sign_in: None,
                tls_ca: None,
            },
        )
        .await
        .expect("a cluster with etcd authentication");
        assert_eq!(answer(&cluster).await, expected().await);
        // 3.
        let catalogs_file = cluster.dir.path().join("catalogs.toml");
        let wrong = "not-the-password-42";
        let text = failing_worker(
            &[
                "--etcd".to_string(),
                etcd.endpoint.clone(),
                "--etcd-user".to_string(),
                "root".to_string(),
                "--catalogs".to_string(),
                catalogs_file.to_string_lossy().to_string(),
            ],
            &[("WEFT_ETCD_PASSWORD", wrong)],
        );
        assert!(text.contains("etcd"), "{text}");
        assert!(!text.contains(wrong), "the password leaked:\n{text}");
    })
    .await
    .expect("the test timed out");
}

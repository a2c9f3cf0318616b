//! TLS on the Flight SQL endpoint and mutual TLS between nodes, with
//! certificates from `weft certs`, on a cluster of processes.
//!
//! `tls_everywhere`:
//! 1. `weft certs` makes a CA and a node certificate for 127.0.0.1-4.
//! 2. A coordinator (TLS endpoint, mutual TLS to workers) and two workers
//!    (mutual TLS) answer a query read over TLS as single-node DataFusion.
//! 3. A client without TLS, and a TLS client trusting another CA, fail.
//! 4. A worker's port refuses a TLS client without a node certificate; the
//!    worker's log says why.
//! 5. A worker whose certificate is of another CA than its --tls-ca-file
//!    refuses to start, naming both files; a worker entirely of another CA
//!    fails to join: the members refuse its certificate when it asks them
//!    before registering, it exits, and its log says why.
//! 6. A new certificate written over the coordinator's files is served to
//!    the next connection (openssl s_client sees its serial), no restart.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_integration_tests::process::{binary, ProcessCluster, ProcessOptions};
use weft_integration_tests::{
    canonical_rows, connect, connect_tls, run_sql, single_node_rows, tpch_dir,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);
const SQL: &str =
    "SELECT l_returnflag, count(*), sum(l_quantity) FROM lineitem GROUP BY 1 ORDER BY 1";

fn catalogs() -> String {
    format!(
        "default_catalog = \"tpch\"\n[catalogs.tpch]\nkind = \"files\"\npath = \"{}\"\nformat = \"parquet\"\n",
        tpch_dir(0.01, 2).display()
    )
}

/// `weft certs --dir DIR --name NAME --host ...`.
fn certs(dir: &Path, name: &str, hosts: &[&str]) {
    let mut cmd = Command::new(binary("weft").unwrap());
    cmd.args(["certs", "--dir"]).arg(dir).args(["--name", name]);
    for h in hosts {
        cmd.args(["--host", h]);
    }
    let out = cmd.output().expect("weft certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_args(dir: &Path, name: &str, ca: &Path) -> Vec<String> {
    vec![
        "--tls-cert-file".into(),
        dir.join(format!("{name}.crt")).display().to_string(),
        "--tls-key-file".into(),
        dir.join(format!("{name}.key")).display().to_string(),
        "--tls-ca-file".into(),
        ca.display().to_string(),
    ]
}

/// The serial of the certificate `addr` serves, as openssl sees it.
fn served_serial(addr: std::net::SocketAddr, ca: &Path) -> String {
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .args(["-alpn", "h2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let pem = s_client.stdout.take().unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(pem)
        .output()
        .expect("openssl x509");
    let _ = s_client.wait();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn file_serial(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_everywhere() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // 1.
        let files = tempfile::tempdir().unwrap();
        let dir: PathBuf = files.path().join("cluster");
        let hosts = [
            "127.0.0.1",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "localhost",
        ];
        certs(&dir, "node", &hosts);
        let ca = dir.join("ca.crt");
        let other: PathBuf = files.path().join("other");
        certs(&other, "node", &hosts);

        // 2.
        let mut cluster = ProcessCluster::start(
            2,
            ProcessOptions {
                catalogs: catalogs(),
                slots: 1,
                env: Vec::new(),
                args: tls_args(&dir, "node", &ca),
                etcd: None,
                http: true,
                sign_in: None,
                tls_ca: Some(ca.clone()),
            },
        )
        .await
        .expect("a cluster with TLS");
        let ctx = weft_integration_tests::tpch_single_node(tpch_dir(0.01, 2)).await;
        let expected = single_node_rows(&ctx, SQL).await;
        let mut client = cluster.client().await.expect("TLS client");
        assert_eq!(
            canonical_rows(&run_sql(&mut client, SQL).await.unwrap()),
            expected
        );

        // 3.
        let plain = format!("http://{}", cluster.coordinator.flight);
        match connect(&plain).await {
            Err(_) => {}
            Ok(mut c) => assert!(run_sql(&mut c, SQL).await.is_err(), "plain text was served"),
        }
        let err = connect_tls(&cluster.flight_url(), &other.join("ca.crt"))
            .await
            .map(|_| ())
            .expect_err("a client trusting another CA connected");
        assert!(format!("{err:?}").contains("certificate"), "{err:?}");

        // 4. The worker's port with the right CA but no client certificate.
        let worker_url = format!("https://{}", cluster.workers[0].flight);
        match connect_tls(&worker_url, &ca).await {
            Err(_) => {}
            Ok(mut c) => assert!(run_sql(&mut c, "SELECT 1").await.is_err()),
        }
        let worker_log = cluster.workers[0].log.clone();
        let logged = weft_integration_tests::eventually(Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&worker_log).unwrap_or_default();
            log.contains("TLS handshake failed") && log.contains("certificate")
        })
        .await;
        assert!(logged, "{}", cluster.workers[0].log_tail());

        // 5. Certificate of another CA with this cluster's CA file: refused at start.
        let catalogs_file = cluster.dir.path().join("catalogs.toml");
        let out = Command::new(binary("weft-worker").unwrap())
            .args(["--listen", "127.0.0.4:0", "--http-listen", "none"])
            .args(["--etcd", "http://127.0.0.1:1"])
            .arg("--catalogs")
            .arg(&catalogs_file)
            .args(tls_args(&other, "node", &ca))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            text.contains("not accepted by the CA") && text.contains(&ca.display().to_string()),
            "{text}"
        );
        // A worker entirely of another CA asks the members before it joins:
        // they refuse its certificate, so it exits and never registers.
        let log = cluster
            .refused_worker(&tls_args(&other, "node", &other.join("ca.crt")))
            .await
            .expect("a worker of another CA is refused");
        println!("the stranger's log:\n{log}");
        assert!(
            log.contains("node credentials are refused by the cluster, so it does not join")
                && log.contains("TLS handshake failed")
                && log.contains("UnknownIssuer")
                && log.contains("--tls-ca-file"),
            "{log}"
        );
        // The cluster goes on with its two workers.
        assert_eq!(
            canonical_rows(
                &run_sql(&mut client, "SELECT count(*) FROM system.runtime.workers")
                    .await
                    .unwrap()
            ),
            ["2"]
        );
        assert_eq!(
            canonical_rows(&run_sql(&mut client, SQL).await.unwrap()),
            expected
        );

        // 6. Rotate the coordinator's certificate in place.
        let before = served_serial(cluster.coordinator.flight, &ca);
        assert_eq!(before, file_serial(&dir.join("node.crt")));
        certs(&dir, "node", &hosts);
        let after = file_serial(&dir.join("node.crt"));
        assert_ne!(before, after);
        assert_eq!(served_serial(cluster.coordinator.flight, &ca), after);
    })
    .await
    .expect("the test timed out");
}

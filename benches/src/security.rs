//! What security costs, as deployed: two clusters of separate processes
//! (etcd, a coordinator, workers) over the same TPC-H files, queried by a
//! Flight SQL client over loopback, in the same run:
//! - `plain`: no authentication, no TLS, no cluster secret;
//! - `secured`: clients sign in against a password file (session tokens on
//!   every RPC), internal calls signed with a cluster secret, TLS on the
//!   Flight SQL endpoint and mutual TLS between all nodes (`weft certs`).
//!
//! Reports `SELECT 1` p50/p99 through each client and TPC-H per query (best
//! of N) and in total, `secured / plain`; answers are compared.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_integration_tests::process::{Etcd, ProcessCluster, ProcessOptions};
use weft_integration_tests::{canonical_rows, run_sql, split_statements, tpch_query};

const USER: (&str, &str) = ("bench", "bench-password");

pub(crate) async fn security(
    scale: f64,
    data: Option<PathBuf>,
    workers: usize,
    iterations: usize,
    latency_iterations: usize,
    queries: Vec<usize>,
) -> anyhow::Result<()> {
    let dir = crate::tpch_data(scale, data)?;
    let queries: Vec<usize> = if queries.is_empty() {
        (1..=22).collect()
    } else {
        queries
    };
    let etcd = Etcd::start().await?;
    let files = tempfile::Builder::new()
        .prefix("weft-bench-sec-")
        .tempdir()?;
    let certs = files.path().join("certs");
    let mut cmd = Command::new(weft_integration_tests::process::binary("weft")?);
    cmd.args(["certs", "--dir"])
        .arg(&certs)
        .args(["--name", "node"]);
    for host in [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
    ] {
        cmd.args(["--host", host]);
    }
    anyhow::ensure!(cmd.status()?.success(), "weft certs failed");
    let passwords = files.path().join("passwords");
    let mut passwd = Command::new(weft_integration_tests::process::binary("weft")?)
        .args(["passwd", "--file"])
        .arg(&passwords)
        .arg(USER.0)
        .stdin(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        writeln!(passwd.stdin.take().expect("stdin"), "{}", USER.1)?;
    }
    anyhow::ensure!(passwd.wait()?.success(), "weft passwd failed");
    let secret = files.path().join("cluster.secret");
    std::fs::write(&secret, "be".repeat(32))?;
    let catalogs = weft_integration_tests::files_catalog_toml("tpch", &dir);
    let path = |p: PathBuf| p.display().to_string();
    let options = |secured: bool| ProcessOptions {
        catalogs: catalogs.clone(),
        slots: (crate::cpus() / workers.max(1)).max(1) as u32,
        env: if secured {
            vec![
                ("RUST_LOG".into(), "warn".into()),
                ("WEFT_PASSWORD_FILE".into(), path(passwords.clone())),
            ]
        } else {
            vec![("RUST_LOG".into(), "warn".into())]
        },
        args: if secured {
            vec![
                "--cluster-secret-file".into(),
                path(secret.clone()),
                "--tls-cert-file".into(),
                path(certs.join("node.crt")),
                "--tls-key-file".into(),
                path(certs.join("node.key")),
                "--tls-ca-file".into(),
                path(certs.join("ca.crt")),
            ]
        } else {
            Vec::new()
        },
        etcd: Some(etcd.endpoint.clone()),
        http: false,
        sign_in: secured.then(|| (USER.0.to_string(), USER.1.to_string())),
        tls_ca: secured.then(|| certs.join("ca.crt")),
    };
    let plain = ProcessCluster::start(workers, options(false)).await?;
    let secured = ProcessCluster::start(workers, options(true)).await?;
    let mut c_plain = plain.client().await?;
    let mut c_secured = secured.client().await?;
    println!(
        "Security overhead, TPC-H SF{scale}, {workers} workers as processes, {} cores",
        crate::cpus()
    );

    // SELECT 1, alternating so drift hits both alike.
    let (mut lat_plain, mut lat_secured) = (Vec::new(), Vec::new());
    for _ in 0..latency_iterations.max(1) {
        let start = Instant::now();
        run_sql(&mut c_plain, "SELECT 1").await?;
        lat_plain.push(start.elapsed());
        let start = Instant::now();
        run_sql(&mut c_secured, "SELECT 1").await?;
        lat_secured.push(start.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
    };
    println!(
        "SELECT 1 ({} each): plain p50 {:.2} ms p99 {:.2} ms; secured p50 {:.2} ms p99 {:.2} ms",
        lat_plain.len(),
        pct(&mut lat_plain, 0.5),
        pct(&mut lat_plain, 0.99),
        pct(&mut lat_secured, 0.5),
        pct(&mut lat_secured, 0.99)
    );

    println!(
        "{:>5} {:>10} {:>10} {:>8}   (best of {iterations})",
        "query", "plain ms", "secured ms", "sec/plain"
    );
    let (mut total_plain, mut total_secured) = (Duration::ZERO, Duration::ZERO);
    let mut mismatches = Vec::new();
    for q in queries {
        let statements = split_statements(&tpch_query(q));
        let (mut best_plain, mut best_secured) = (Duration::MAX, Duration::MAX);
        let (mut rows_plain, mut rows_secured) = (Vec::new(), Vec::new());
        for _ in 0..iterations.max(1) {
            let start = Instant::now();
            for s in &statements {
                rows_plain = canonical_rows(&run_sql(&mut c_plain, s).await?);
            }
            best_plain = best_plain.min(start.elapsed());
            let start = Instant::now();
            for s in &statements {
                rows_secured = canonical_rows(&run_sql(&mut c_secured, s).await?);
            }
            best_secured = best_secured.min(start.elapsed());
        }
        rows_plain.sort();
        rows_secured.sort();
        let check = if rows_plain == rows_secured {
            ""
        } else {
            mismatches.push(q);
            "  DIFFERENT ANSWER"
        };
        total_plain += best_plain;
        total_secured += best_secured;
        println!(
            "{:>5} {:>10.1} {:>10.1} {:>8.3}{check}",
            format!("q{q}"),
            best_plain.as_secs_f64() * 1e3,
            best_secured.as_secs_f64() * 1e3,
            best_secured.as_secs_f64() / best_plain.as_secs_f64()
        );
    }
    println!(
        "{:>5} {:>10.1} {:>10.1} {:>8.3}",
        "total",
        total_plain.as_secs_f64() * 1e3,
        total_secured.as_secs_f64() * 1e3,
        total_secured.as_secs_f64() / total_plain.as_secs_f64()
    );
    drop((plain, secured));
    if !mismatches.is_empty() {
        anyhow::bail!("answers differ between the two clusters for {mismatches:?}");
    }
    Ok(())
}

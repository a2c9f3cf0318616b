//! Cross-database joins: TPC-H with `lineitem` and `orders` in one
//! PostgreSQL database and the other tables in a second one, queried by Weft
//! (a `postgres` catalog per database, coordinator + workers in this
//! process) and by PostgreSQL's own `postgres_fdw` (the first database
//! importing the second's tables), in the same run, on the same server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_common::config::{CatalogConfig, CatalogsConfig};
use weft_integration_tests::pg::{
    batch_rows, connect, load_tpch_tables, pg_rows, postgres_catalog, same_rows, with_database,
};
use weft_integration_tests::{qualify_tables, tpch_query, ClusterOptions, TestCluster};

/// The big tables, in database A.
const FACTS: [&str; 2] = ["lineitem", "orders"];
/// The others, in database B.
const DIMENSIONS: [&str; 6] = [
    "customer", "nation", "region", "supplier", "part", "partsupp",
];
/// TPC-H queries that join tables of both databases.
const QUERIES: [usize; 5] = [3, 5, 10, 12, 14];

/// `text` with every TPC-H table name qualified by its catalog.
fn qualify(text: &str) -> String {
    let catalogs: Vec<(&str, &str)> = FACTS
        .iter()
        .map(|t| (*t, "a"))
        .chain(DIMENSIONS.iter().map(|t| (*t, "b")))
        .collect();
    qualify_tables(text, &catalogs)
}

/// Creates database `name` with `tables` unless it is already loaded.
pub(crate) async fn ensure_database(
    admin_url: &str,
    name: &str,
    dir: &std::path::Path,
    tables: &[&str],
) -> anyhow::Result<String> {
    let admin = connect(admin_url).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    let url = with_database(admin_url, name);
    if exists {
        let client = connect(&url).await?;
        let loaded = client
            .query_opt(
                "SELECT 1 FROM pg_stat_user_tables WHERE relname = 'loaded_ok'",
                &[],
            )
            .await?
            .is_some();
        if loaded {
            return Ok(url);
        }
        drop(client);
        admin
            .batch_execute(&format!("DROP DATABASE {name}"))
            .await?;
    }
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    eprintln!("loading {tables:?} into database {name}");
    let client = connect(&url).await?;
    load_tpch_tables(&client, dir, tables).await?;
    client
        .batch_execute("CREATE TABLE loaded_ok (x int)")
        .await?;
    Ok(url)
}

/// user, password, host, port of a `postgresql://user:password@host:port/db` URL.
fn url_parts(url: &str) -> anyhow::Result<(String, String, String, String)> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("not a URL: {url}"))?;
    let (credentials, address) = rest
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("the URL needs user:password@"))?;
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let address = address.split('/').next().unwrap_or_default();
    let (host, port) = address.split_once(':').unwrap_or((address, "5432"));
    Ok((user.into(), password.into(), host.into(), port.into()))
}

pub(crate) async fn fedjoin(
    pg_url: String,
    scale: f64,
    data: Option<std::path::PathBuf>,
    workers: usize,
    iterations: usize,
    queries: Vec<usize>,
) -> anyhow::Result<()> {
    if let Some(q) = queries.iter().find(|q| !QUERIES.contains(q)) {
        anyhow::bail!(
            "--queries: q{q} does not join tables of both databases; choose from {QUERIES:?}"
        );
    }
    let queries = if queries.is_empty() {
        QUERIES.to_vec()
    } else {
        queries
    };
    let dir =
        data.unwrap_or_else(|| std::env::temp_dir().join(format!("weft-bench-tpch-sf{scale}")));
    if !dir.join("lineitem").exists() {
        eprintln!("generating TPC-H SF{scale} in {}", dir.display());
        weft_common::sample::generate_tpch(&dir, scale, crate::cpus())?;
    }
    let suffix = scale.to_string().replace('.', "_");
    let a_url = ensure_database(&pg_url, &format!("weft_fed_a_sf{suffix}"), &dir, &FACTS).await?;
    let b_db = format!("weft_fed_b_sf{suffix}");
    let b_url = ensure_database(&pg_url, &b_db, &dir, &DIMENSIONS).await?;

    // postgres_fdw: database A sees B's tables in schema fdw, on its search path.
    let a = connect(&a_url).await?;
    let (user, password, host, port) = url_parts(&b_url)?;
    a.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS postgres_fdw;
         DROP SCHEMA IF EXISTS fdw CASCADE;
         DROP SERVER IF EXISTS fed_b CASCADE;
         CREATE SERVER fed_b FOREIGN DATA WRAPPER postgres_fdw
           OPTIONS (host '{host}', port '{port}', dbname '{b_db}', fetch_size '10000', use_remote_estimate 'true');
         CREATE USER MAPPING FOR CURRENT_USER SERVER fed_b OPTIONS (user '{user}', password '{password}');
         CREATE SCHEMA fdw;
         IMPORT FOREIGN SCHEMA public FROM SERVER fed_b INTO fdw;
         ALTER DATABASE {} SET search_path = public, fdw;",
        a_url.rsplit('/').next().unwrap_or_default()
    ))
    .await?;
    drop(a);
    let a = connect(&a_url).await?;

    let mut catalogs = CatalogsConfig::default();
    catalogs.catalogs.insert(
        "a".into(),
        CatalogConfig::Postgres(postgres_catalog(&a_url)),
    );
    catalogs.catalogs.insert(
        "b".into(),
        CatalogConfig::Postgres(postgres_catalog(&b_url)),
    );
    let cluster = TestCluster::start(
        workers,
        ClusterOptions {
            catalogs,
            etcd: false,
            slots: (crate::cpus() / workers.max(1)).max(1) as u32,
            ..Default::default()
        },
    )
    .await?;

    println!("TPC-H SF{scale}: lineitem, orders in database A; the rest in database B; best of {iterations}");
    println!(
        "{:<6} {:>12} {:>14} {:>8}",
        "query", "Weft (s)", "postgres_fdw (s)", "fdw/Weft"
    );
    let mut totals: HashMap<&str, Duration> = HashMap::new();
    for q in queries {
        let text = tpch_query(q);
        let federated = qualify(&text);
        if std::env::var_os("WEFT_SHOW_PLANS").is_some() {
            for b in cluster.query(&format!("EXPLAIN {federated}")).await? {
                eprintln!("{}", arrow::util::pretty::pretty_format_batches(&[b])?);
            }
        }
        let (mut weft, mut fdw) = (Duration::MAX, Duration::MAX);
        let (mut weft_rows, mut fdw_rows) = (Vec::new(), Vec::new());
        for _ in 0..iterations.max(1) {
            let start = Instant::now();
            weft_rows = batch_rows(&cluster.query(&federated).await?);
            weft = weft.min(start.elapsed());
            let start = Instant::now();
            fdw_rows = pg_rows(&a, &text).await?;
            fdw = fdw.min(start.elapsed());
        }
        if let Err(e) = same_rows(&weft_rows, &fdw_rows) {
            anyhow::bail!("q{q}: Weft and postgres_fdw disagree: {e}");
        }
        *totals.entry("weft").or_default() += weft;
        *totals.entry("fdw").or_default() += fdw;
        println!(
            "q{q:<5} {:>12.2} {:>14.2} {:>8.2}",
            weft.as_secs_f64(),
            fdw.as_secs_f64(),
            fdw.as_secs_f64() / weft.as_secs_f64()
        );
    }
    let (w, f) = (totals["weft"], totals["fdw"]);
    println!(
        "total  {:>12.2} {:>14.2} {:>8.2}   (> 1: Weft faster)",
        w.as_secs_f64(),
        f.as_secs_f64(),
        f.as_secs_f64() / w.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_table_names_only() {
        assert_eq!(
            qualify("select c_orders, o_orderkey from customer, orders where x"),
            "select c_orders, o_orderkey from b.public.customer, a.public.orders where x"
        );
    }
}

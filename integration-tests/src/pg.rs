//! PostgreSQL for tests: the server `scripts/test.sh` starts (`WEFT_TEST_PG`),
//! a fresh database per test, TPC-H loaded with `COPY`, and result comparison.

use std::path::Path;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use weft_common::config::{CatalogConfig, CatalogsConfig, DatabaseConfig, SecretUrl};

/// Environment variable holding the admin URL of the test PostgreSQL.
pub const TEST_PG_ENV: &str = "WEFT_TEST_PG";

/// The admin URL of the test server.
pub fn admin_url() -> anyhow::Result<String> {
    std::env::var(TEST_PG_ENV).map_err(|_| {
        anyhow::anyhow!(
            "{TEST_PG_ENV} is not set: run the tests with scripts/test.sh, which starts PostgreSQL, or export {TEST_PG_ENV}=postgresql://user:password@127.0.0.1:5432/postgres"
        )
    })
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > url.find("://").map(|j| j + 2).unwrap_or(0) => {
            format!("{}/{db}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

/// Connects to `url`, driving the connection in the background.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates an empty database with a unique name; returns its URL.
pub async fn create_database(prefix: &str) -> anyhow::Result<String> {
    let admin = admin_url()?;
    let name = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    connect(&admin)
        .await?
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    Ok(with_database(&admin, &name))
}

/// A `postgres` catalog for `url` with default settings.
pub fn postgres_catalog(url: &str) -> DatabaseConfig {
    DatabaseConfig::new(SecretUrl::new(url))
}

/// A catalog file with the given `postgres` catalogs; the first is the default.
pub fn catalogs(entries: Vec<(&str, DatabaseConfig)>) -> CatalogsConfig {
    catalog_file(
        entries
            .into_iter()
            .map(|(n, db)| (n, CatalogConfig::Postgres(db)))
            .collect(),
    )
}

/// A catalog file with the given catalogs; the first is the default.
pub fn catalog_file(entries: Vec<(&str, CatalogConfig)>) -> CatalogsConfig {
    let mut c = CatalogsConfig {
        default_catalog: entries.first().map(|(n, _)| n.to_string()),
        ..Default::default()
    };
    for (name, catalog) in entries {
        c.catalogs.insert(name.to_string(), catalog);
    }
    c
}

/// TPC-H tables with the specification's types (`char(n)` included).
pub const TPCH_DDL: &str = "
CREATE TABLE region (r_regionkey bigint NOT NULL, r_name char(25), r_comment varchar(152));
CREATE TABLE nation (n_nationkey bigint NOT NULL, n_name char(25), n_regionkey bigint, n_comment varchar(152));
CREATE TABLE part (p_partkey bigint NOT NULL, p_name varchar(55), p_mfgr char(25), p_brand char(10), p_type varchar(25), p_size integer, p_container char(10), p_retailprice numeric(15,2), p_comment varchar(23));
CREATE TABLE supplier (s_suppkey bigint NOT NULL, s_name char(25), s_address varchar(40), s_nationkey bigint, s_phone char(15), s_acctbal numeric(15,2), s_comment varchar(101));
CREATE TABLE partsupp (ps_partkey bigint NOT NULL, ps_suppkey bigint NOT NULL, ps_availqty integer, ps_supplycost numeric(15,2), ps_comment varchar(199));
CREATE TABLE customer (c_custkey bigint NOT NULL, c_name varchar(25), c_address varchar(40), c_nationkey bigint, c_phone char(15), c_acctbal numeric(15,2), c_mktsegment char(10), c_comment varchar(117));
CREATE TABLE orders (o_orderkey bigint NOT NULL, o_custkey bigint, o_orderstatus char(1), o_totalprice numeric(15,2), o_orderdate date, o_orderpriority char(15), o_clerk char(15), o_shippriority integer, o_comment varchar(79));
CREATE TABLE lineitem (l_orderkey bigint NOT NULL, l_partkey bigint, l_suppkey bigint, l_linenumber integer, l_quantity numeric(15,2), l_extendedprice numeric(15,2), l_discount numeric(15,2), l_tax numeric(15,2), l_returnflag char(1), l_linestatus char(1), l_shipdate date, l_commitdate date, l_receiptdate date, l_shipinstruct char(25), l_shipmode char(10), l_comment varchar(44));
";

/// Creates the TPC-H tables in `client`'s database and loads the Parquet
/// files of `dir` (one directory per table) with `COPY ... FROM STDIN`.
pub async fn load_tpch(client: &Client, dir: &Path) -> anyhow::Result<()> {
    load_tpch_tables(client, dir, &weft_common::sample::TPCH_TABLES).await
}

/// [`load_tpch`] for some of the tables only.
pub async fn load_tpch_tables(client: &Client, dir: &Path, tables: &[&str]) -> anyhow::Result<()> {
    // Keys, and the indexes PostgreSQL needs for the correlated subqueries of
    // q2, q17 and q20 (it does not decorrelate them).
    let keys = |table: &str| match table {
        "region" => "ALTER TABLE region ADD PRIMARY KEY (r_regionkey)",
        "nation" => "ALTER TABLE nation ADD PRIMARY KEY (n_nationkey)",
        "part" => "ALTER TABLE part ADD PRIMARY KEY (p_partkey)",
        "supplier" => "ALTER TABLE supplier ADD PRIMARY KEY (s_suppkey)",
        "partsupp" => "ALTER TABLE partsupp ADD PRIMARY KEY (ps_partkey, ps_suppkey)",
        "customer" => "ALTER TABLE customer ADD PRIMARY KEY (c_custkey)",
        "orders" => "ALTER TABLE orders ADD PRIMARY KEY (o_orderkey)",
        "lineitem" => {
            "CREATE INDEX ON lineitem (l_partkey, l_suppkey); CREATE INDEX ON lineitem (l_orderkey)"
        }
        _ => "",
    };
    let ctx = datafusion::prelude::SessionContext::new();
    for table in tables {
        let ddl = TPCH_DDL
            .lines()
            .find(|l| l.starts_with(&format!("CREATE TABLE {table} (")))
            .ok_or_else(|| anyhow::anyhow!("no TPC-H table {table}"))?;
        client.batch_execute(ddl).await?;
        let path = dir.join(table);
        let batches = ctx
            .read_parquet(
                path.to_string_lossy().as_ref(),
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await?
            .collect()
            .await?;
        copy_in(client, table, &batches).await?;
        client.batch_execute(keys(table)).await?;
    }
    client.batch_execute("ANALYZE").await?;
    Ok(())
}

/// Appends `batches` to `table` with `COPY ... FROM STDIN (FORMAT csv)`.
pub async fn copy_in(client: &Client, table: &str, batches: &[RecordBatch]) -> anyhow::Result<()> {
    let mut csv = Vec::new();
    {
        let mut writer = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut csv);
        for b in batches {
            writer.write(b)?;
        }
    }
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN (FORMAT csv)"))
        .await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(csv)).await?;
    sink.finish().await?;
    Ok(())
}

/// Runs a script on PostgreSQL; returns the rows of its last result set.
pub async fn pg_rows(client: &Client, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut sets: Vec<Vec<Vec<String>>> = vec![];
    let mut current: Option<Vec<Vec<String>>> = None;
    for m in client.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(_) => current = Some(vec![]),
            SimpleQueryMessage::Row(r) => {
                let row = (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect();
                current.get_or_insert_with(Vec::new).push(row);
            }
            SimpleQueryMessage::CommandComplete(_) => {
                if let Some(set) = current.take() {
                    sets.push(set);
                }
            }
            _ => {}
        }
    }
    Ok(sets.pop().unwrap_or_default())
}

/// Rows of Arrow batches as strings, floats as Arrow prints them.
pub fn batch_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    crate::format_rows(batches, |v| v.to_string())
}

fn number(cell: &str) -> Option<f64> {
    let t = cell.trim();
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
    {
        return None;
    }
    t.parse().ok()
}

fn sort_key(row: &[String]) -> Vec<String> {
    row.iter()
        .map(|c| match number(c) {
            Some(v) => format!("{v:.2}"),
            None => c.trim_end().to_string(),
        })
        .collect()
}

/// Compares two result sets ignoring row order, char(n) padding and the
/// number of decimal digits (numbers within a relative 1e-6).
pub fn same_rows(a: &[Vec<String>], b: &[Vec<String>]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} rows vs {} rows", a.len(), b.len()));
    }
    let mut a: Vec<_> = a.to_vec();
    let mut b: Vec<_> = b.to_vec();
    a.sort_by_key(|r| sort_key(r));
    b.sort_by_key(|r| sort_key(r));
    for (ra, rb) in a.iter().zip(&b) {
        if ra.len() != rb.len() {
            return Err(format!("{ra:?} vs {rb:?}: column counts differ"));
        }
        for (x, y) in ra.iter().zip(rb) {
            let same = match (number(x), number(y)) {
                (Some(p), Some(q)) => (p - q).abs() <= 1e-6 * p.abs().max(q.abs()).max(1.0),
                _ => x.trim_end() == y.trim_end(),
            };
            if !same {
                return Err(format!("row {ra:?} vs {rb:?}"));
            }
        }
    }
    Ok(())
}

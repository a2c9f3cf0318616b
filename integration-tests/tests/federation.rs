//! Federation across real databases (started by `scripts/test.sh`): the
//! jaffle_shop data mesh with customers in one PostgreSQL database, orders in
//! MariaDB and payments in a second PostgreSQL database, joined through a
//! 2-worker cluster, against the same queries run by one PostgreSQL database
//! holding all three tables.

use std::path::PathBuf;
use std::time::Duration;

use weft_common::config::CatalogConfig;
use weft_integration_tests::pg::{
    batch_rows, catalog_file, connect, create_database, load_tpch, load_tpch_tables, pg_rows,
    postgres_catalog, same_rows,
};
use weft_integration_tests::{
    mysql, qualify_tables, split_statements, tpch_dir, tpch_query, ClusterOptions, TestCluster,
};

/// The rows of a jaffle CSV file (header dropped).
fn jaffle(file: &str) -> Vec<Vec<String>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/jaffle")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("jaffle data");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// `INSERT INTO table VALUES ...` with every cell quoted except `numeric`
/// columns.
fn insert_sql(table: &str, rows: &[Vec<String>], numeric: &[usize]) -> String {
    let values: Vec<String> = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if numeric.contains(&i) {
                        c.clone()
                    } else {
                        format!("'{}'", c.replace('\'', "''"))
                    }
                })
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect();
    format!("INSERT INTO {table} VALUES {}", values.join(", "))
}

const CUSTOMERS_DDL: &str =
    "CREATE TABLE customers (id integer PRIMARY KEY, first_name varchar(50), last_name varchar(50))";
const ORDERS_DDL: &str =
    "CREATE TABLE orders (id integer PRIMARY KEY, user_id integer, order_date date, status varchar(20))";
const PAYMENTS_DDL: &str = "CREATE TABLE payments (id integer PRIMARY KEY, order_id integer, payment_method varchar(20), amount integer)";

/// Queries over `{customers}`, `{orders}` and `{payments}`.
const QUERIES: [&str; 3] = [
    // Customer lifetime value: a three-way join and an aggregate.
    "SELECT c.id, c.first_name, c.last_name, count(DISTINCT o.id) AS orders, \
            min(o.order_date) AS first_order, sum(p.amount) AS lifetime_cents, \
            sum(CASE WHEN p.payment_method = 'credit_card' THEN p.amount ELSE 0 END) AS card_cents \
     FROM {customers} c JOIN {orders} o ON o.user_id = c.id JOIN {payments} p ON p.order_id = o.id \
     WHERE o.status <> 'returned' AND p.amount > 0 \
     GROUP BY c.id, c.first_name, c.last_name",
    // Customers without orders survive a left join.
    "SELECT c.id, c.last_name, count(o.id) AS orders, coalesce(sum(p.amount), 0) AS cents \
     FROM {customers} c LEFT JOIN {orders} o ON o.user_id = c.id \
          LEFT JOIN {payments} p ON p.order_id = o.id \
     GROUP BY c.id, c.last_name",
    // Payment methods per order status and month, from 2018-02 on.
    "SELECT o.status, extract(month FROM o.order_date) AS month, p.payment_method, \
            count(*) AS payments, sum(p.amount) AS cents \
     FROM {orders} o JOIN {payments} p ON p.order_id = o.id \
     WHERE o.order_date >= DATE '2018-02-01' \
     GROUP BY o.status, extract(month FROM o.order_date), p.payment_method",
];

fn render(query: &str, customers: &str, orders: &str, payments: &str) -> String {
    query
        .replace("{customers}", customers)
        .replace("{orders}", orders)
        .replace("{payments}", payments)
}

/// Customers in PostgreSQL, orders in MariaDB, payments in a second
/// PostgreSQL database: the joins and aggregates through a 2-worker cluster
/// equal one PostgreSQL database holding all three tables, and EXPLAIN shows
/// one remote scan per catalog, each with its own filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jaffle_data_mesh_across_postgres_and_mariadb() {
    let customers = jaffle("raw_customers.csv");
    let orders = jaffle("raw_orders.csv");
    let payments = jaffle("raw_payments.csv");
    assert_eq!(
        (customers.len(), orders.len(), payments.len()),
        (100, 99, 113)
    );

    let crm_url = create_database("weft_crm").await.expect("crm database");
    let crm = connect(&crm_url).await.expect("connect crm");
    crm.batch_execute(CUSTOMERS_DDL).await.expect("customers");
    crm.batch_execute(&insert_sql("customers", &customers, &[0]))
        .await
        .expect("load customers");

    let billing_url = create_database("weft_billing")
        .await
        .expect("billing database");
    let billing = connect(&billing_url).await.expect("connect billing");
    billing.batch_execute(PAYMENTS_DDL).await.expect("payments");
    billing
        .batch_execute(&insert_sql("payments", &payments, &[0, 1, 3]))
        .await
        .expect("load payments");

    let shop_url = mysql::create_database("weft_shop")
        .await
        .expect("shop database");
    let shop_db = shop_url.rsplit('/').next().unwrap().to_string();
    let mut shop = mysql::connect(&shop_url).await.expect("connect shop");
    mysql::execute(&mut shop, ORDERS_DDL).await.expect("orders");
    mysql::execute(&mut shop, &insert_sql("orders", &orders, &[0, 1]))
        .await
        .expect("load orders");

    // The reference: all three tables in one PostgreSQL database.
    let all_url = create_database("weft_all")
        .await
        .expect("reference database");
    let all = connect(&all_url).await.expect("connect reference");
    for (ddl, table, rows, numeric) in [
        (CUSTOMERS_DDL, "customers", &customers, &[0][..]),
        (ORDERS_DDL, "orders", &orders, &[0, 1][..]),
        (PAYMENTS_DDL, "payments", &payments, &[0, 1, 3][..]),
    ] {
        all.batch_execute(ddl).await.expect("reference table");
        all.batch_execute(&insert_sql(table, rows, numeric))
            .await
            .expect("load reference");
    }

    let catalogs = catalog_file(vec![
        ("crm", CatalogConfig::Postgres(postgres_catalog(&crm_url))),
        ("shop", CatalogConfig::Mysql(postgres_catalog(&shop_url))),
        (
            "billing",
            CatalogConfig::Postgres(postgres_catalog(&billing_url)),
        ),
    ]);
    let cluster = tokio::time::timeout(
        Duration::from_secs(60),
        TestCluster::start(
            2,
            ClusterOptions {
                catalogs,
                target_partitions: Some(4),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("cluster start timed out")
    .expect("cluster starts");

    let shop_orders = format!("shop.{shop_db}.orders");
    let mut failures = Vec::new();
    for (i, q) in QUERIES.iter().enumerate() {
        let want = pg_rows(&all, &render(q, "customers", "orders", "payments"))
            .await
            .expect("reference query");
        let federated = render(
            q,
            "crm.public.customers",
            &shop_orders,
            "billing.public.payments",
        );
        match cluster.query(&federated).await {
            Ok(batches) => {
                let got = batch_rows(&batches);
                assert!(!got.is_empty(), "query {i} returns rows");
                if let Err(e) = same_rows(&got, &want) {
                    failures.push(format!("query {i}: {e}"));
                }
            }
            Err(e) => failures.push(format!("query {i} failed: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Each source gets its own scan with the filters it can evaluate.
    let sql = render(
        QUERIES[2],
        "crm.public.customers",
        &shop_orders,
        "billing.public.payments",
    )
    .replace("WHERE", "WHERE p.amount > 1000 AND");
    let plan = explain(&cluster, &sql).await;
    let scans: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("RemoteScanExec"))
        .collect();
    assert_eq!(scans.len(), 2, "one remote scan per catalog:\n{plan}");
    let mysql_scan = scans
        .iter()
        .find(|l| l.contains("catalog=shop"))
        .expect("shop scan");
    assert!(
        mysql_scan.contains("kind=mysql")
            && mysql_scan.contains("WHERE (`order_date` >= ")
            && mysql_scan.contains("FROM `weft_shop_"),
        "the order date filter runs in MariaDB:\n{plan}"
    );
    let pg_scan = scans
        .iter()
        .find(|l| l.contains("catalog=billing"))
        .expect("billing scan");
    assert!(
        pg_scan.contains("kind=postgres") && pg_scan.contains(r#"WHERE ("amount" > 1000)"#),
        "the amount filter runs in PostgreSQL:\n{plan}"
    );
}

/// TPC-H with lineitem and orders in one PostgreSQL database and the other
/// tables in another: the queries that join both equal one database holding
/// everything; the orders-lineitem join runs inside the first database as one
/// query (inner joins are regrouped by database along key joins), filtered by
/// the join keys of the second database's small filtered side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_across_two_postgres_databases() {
    let dir = tpch_dir(0.05, 2);
    let facts = ["lineitem", "orders"];
    let dimensions = [
        "customer", "nation", "region", "supplier", "part", "partsupp",
    ];
    let a_url = create_database("weft_facts").await.expect("facts database");
    load_tpch_tables(&connect(&a_url).await.expect("connect"), dir, &facts)
        .await
        .expect("load facts");
    let b_url = create_database("weft_dims")
        .await
        .expect("dimensions database");
    load_tpch_tables(&connect(&b_url).await.expect("connect"), dir, &dimensions)
        .await
        .expect("load dimensions");
    let all_url = create_database("weft_tpch_all")
        .await
        .expect("reference database");
    let all = connect(&all_url).await.expect("connect");
    load_tpch(&all, dir).await.expect("load reference");

    // Small splits, so that plain scans of lineitem and orders are read in
    // parts.
    let mut facts_catalog = postgres_catalog(&a_url);
    facts_catalog.split_size = 256 * 1024;
    let cluster = tokio::time::timeout(
        Duration::from_secs(60),
        TestCluster::start(
            2,
            ClusterOptions {
                catalogs: catalog_file(vec![
                    ("a", CatalogConfig::Postgres(facts_catalog)),
                    ("b", CatalogConfig::Postgres(postgres_catalog(&b_url))),
                ]),
                target_partitions: Some(4),
                lease_ttl_secs: 10,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("cluster start timed out")
    .expect("cluster starts");
    let catalogs: Vec<(&str, &str)> = facts
        .iter()
        .map(|t| (*t, "a"))
        .chain(dimensions.iter().map(|t| (*t, "b")))
        .collect();

    let q5 = qualify_tables(&tpch_query(5), &catalogs);
    let plan = explain(&cluster, &q5).await;
    assert!(
        plan.lines().any(|l| l
            .contains("RemoteScanExec: catalog=a, kind=postgres, relation=query")
            && l.contains(r#""public"."orders""#)
            && l.contains(r#""public"."lineitem""#)
            && l.contains("JOIN")
            && l.contains("splits=1")
            && l.contains(r#"WHERE "c1" IN ("#)
            && l.contains(" more)")),
        "orders and lineitem are joined in database a as one query, filtered by the \
         supplier keys of region AFRICA from database b:\n{plan}"
    );
    assert!(
        plan.lines().any(|l| l
            .contains("RemoteScanExec: catalog=b, kind=postgres, relation=public.customer")
            && l.contains(r#""c_nationkey" IN ("#)),
        "customers are read for the nations of region AFRICA only:\n{plan}"
    );

    let left_join = "select s_name, count(l_orderkey) from supplier left join lineitem \
         on l_suppkey = s_suppkey and l_shipdate = date '1995-01-01' \
         where s_nationkey = 3 group by s_name order by s_name";
    let plan = explain(&cluster, &qualify_tables(left_join, &catalogs)).await;
    assert!(
        plan.lines().any(|l| l
            .contains("RemoteScanExec: catalog=a, kind=postgres, relation=public.lineitem")
            && l.contains(r#""l_suppkey" IN ("#)),
        "the inner side of a left join is filtered by the keys of the outer side:\n{plan}"
    );

    let mut failures = Vec::new();
    let mut queries: Vec<(String, String)> = [3, 5, 7, 10, 12, 14, 18, 19, 21]
        .into_iter()
        .map(|q| (format!("q{q}"), tpch_query(q)))
        .collect();
    // No key on the filtered side: the other database's scan reads nothing.
    queries.push((
        "q5 without suppliers".into(),
        tpch_query(5).replace("'AFRICA'", "'ATLANTIS'"),
    ));
    // Key filters across an outer join (its inner side) and a semi join.
    queries.push(("left join".into(), left_join.into()));
    queries.push((
        "semi join".into(),
        "select count(*), sum(l_quantity) from lineitem where l_suppkey in \
         (select s_suppkey from supplier where s_nationkey = 7)"
            .into(),
    ));
    for (q, text) in queries {
        let want = pg_rows(&all, &text).await.expect("reference query");
        let mut got = Vec::new();
        for statement in split_statements(&qualify_tables(&text, &catalogs)) {
            match cluster.query(&statement).await {
                Ok(batches) => got = batch_rows(&batches),
                Err(e) => failures.push(format!("{q}: {e}")),
            }
        }
        if let Err(e) = same_rows(&got, &want) {
            failures.push(format!("{q}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn explain(cluster: &TestCluster, sql: &str) -> String {
    cluster.explain(sql).await.expect("explain")
}

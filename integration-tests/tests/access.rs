//! Access rules (`weft-coordinator --access-rules-file`) on a real cluster:
//! etcd, a coordinator with a password file and a rules file, two workers,
//! TPC-H Parquet files and a PostgreSQL database.
//!
//! `rules_hide_mask_and_filter_everywhere`:
//! 1. alice (group analysts) reads `pg.public.accounts` through its rule:
//!    `SELECT *` has no `ssn`, `email` is masked, and only the rows of the
//!    row filter (`region = 'EU' OR owner = current_user`) come back; the
//!    answer equals PostgreSQL's own for the same rule written by hand.
//! 2. The hidden column cannot be reached by name, through a subquery or
//!    CTE (clients cannot create views: the surface is read-only), an
//!    aggregate, or a join the database runs whole; that join's remote SQL
//!    carries the row filter with alice's name and never names `ssn`.
//! 3. The row filter on `lineitem` holds on every worker: a multi-task
//!    aggregate equals single-node DataFusion over the filtered table, and
//!    `EXPLAIN` shows the filter in the logical plan and in the scan of
//!    every task's fragment.
//! 4. Deny by default: bob, whom no rule names, is refused `PermissionDenied`
//!    with a message naming the table and the file; the listing he gets
//!    (`information_schema`, Flight SQL `GetTables`) holds none of the tables
//!    he may not read. The admin is no exception.
//! 5. The file is read again when it changes: a rule added for bob lets him
//!    read `orders` within seconds, while `lineitem` stays denied.

use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, CommandStatementQuery, ProstMessageExt};
use arrow_flight::FlightDescriptor;
use prost::Message;
use tonic::transport::Channel;
use weft_integration_tests::pg::{
    batch_rows, connect as pg_connect, create_database, pg_rows, same_rows,
};
use weft_integration_tests::process::{weft_passwd, ProcessCluster, ProcessOptions};
use weft_integration_tests::{connect, format_rows, read_all, run_sql, single_node_rows, tpch_dir};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

const RULES: &str = r#"
[groups]
analysts = ["alice", "carol"]

[[tables]]
catalog = "system"
allow = true

[[tables]]
group = "analysts"
catalog = "pg"
schema = "public"
table = "accounts"
allow = true
row_filter = "region = 'EU' OR owner = current_user"
columns = [
  { name = "ssn", allow = false },
  { name = "email", mask = "concat(substr(email, 1, 2), '***')" },
]

[[tables]]
group = "analysts"
catalog = "pg"
schema = "public"
table = "payments"
allow = true

[[tables]]
group = "analysts"
catalog = "tpch"
table = "lineitem"
allow = true
row_filter = "l_returnflag = 'R'"

[[tables]]
user = "carol"
catalog = "tpch"
allow = true
"#;

const BOB_ORDERS: &str = r#"
[[tables]]
user = "bob"
catalog = "tpch"
table = "orders"
allow = true
"#;

async fn sign_in(cluster: &ProcessCluster, user: &str) -> FlightSqlServiceClient<Channel> {
    let mut client = connect(&cluster.flight_url()).await.expect("connect");
    client
        .handshake(user, &format!("{user}-password"))
        .await
        .expect("sign in");
    client
}

async fn rows(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<Vec<String>> {
    let batches = run_sql(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    batch_rows(&batches)
}

async fn refused(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    match run_sql(client, sql).await {
        Ok(b) => panic!("{sql} was answered: {:?}", batch_rows(&b)),
        // The client quotes the server's message as a Rust string.
        Err(e) => e.to_string().replace("\\\"", "\""),
    }
}

/// The `distributed_plan` row and the whole text of `EXPLAIN sql`.
async fn explain(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> (String, String) {
    let batches = run_sql(client, &format!("EXPLAIN {sql}"))
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"));
    let all = format_rows(&batches, |v| v.to_string());
    let distributed = all
        .iter()
        .find(|r| r[0] == "distributed_plan")
        .map(|r| r[1].clone())
        .expect("a distributed_plan row");
    let text = all
        .iter()
        .map(|r| r.join("\n"))
        .collect::<Vec<_>>()
        .join("\n");
    (distributed, text)
}

/// `sql` as `token`'s user through a raw Flight client: the gRPC status.
async fn status_of(cluster: &ProcessCluster, token: &str, sql: &str) -> tonic::Status {
    let mut raw = FlightServiceClient::new(
        Channel::from_shared(cluster.flight_url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let descriptor = FlightDescriptor::new_cmd(
        CommandStatementQuery {
            query: sql.into(),
            transaction_id: None,
        }
        .as_any()
        .encode_to_vec(),
    );
    let mut request = tonic::Request::new(descriptor);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    raw.get_flight_info(request).await.expect_err("refused")
}

/// Table names of Flight SQL `GetTables` (all catalogs).
async fn listed_tables(client: &mut FlightSqlServiceClient<Channel>) -> Vec<String> {
    let info = client
        .get_tables(CommandGetTables::default())
        .await
        .expect("GetTables");
    let batches = read_all(client, &info).await.expect("read GetTables");
    format_rows(&batches, |v| v.to_string())
        .into_iter()
        .map(|r| format!("{}.{}.{}", r[0], r[1], r[2]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_hide_mask_and_filter_everywhere() {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .expect("the test finishes within its timeout");
}

async fn run() {
    // PostgreSQL: accounts with a secret column, payments to join.
    let url = create_database("weft_access")
        .await
        .expect("create database");
    let db = pg_connect(&url).await.expect("connect");
    db.batch_execute(
        "CREATE TABLE accounts (id integer PRIMARY KEY, owner text, region text, ssn text, email text);
         CREATE TABLE payments (id integer PRIMARY KEY, account_id integer, amount numeric(10,2));
         INSERT INTO accounts SELECT g, (ARRAY['alice','bob','carol'])[1 + g % 3],
             (ARRAY['EU','US','APAC','US'])[1 + g % 4], 'ssn-' || (100000 + g), 'user' || g || '@example.com'
           FROM generate_series(1, 400) g;
         INSERT INTO payments SELECT g, 1 + g % 400, (g % 89) * 1.5 FROM generate_series(1, 3000) g;
         ANALYZE accounts; ANALYZE payments;",
    )
    .await
    .expect("create tables");

    let files = tempfile::Builder::new()
        .prefix("weft-access-")
        .tempdir()
        .unwrap();
    let passwords = files.path().join("passwords");
    for user in ["alice", "bob", "carol", "root"] {
        weft_passwd(&passwords, user, &format!("{user}-password"));
    }
    let rules = files.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let tpch = tpch_dir(0.01, 4);
    let catalogs = format!(
        "default_catalog = \"tpch\"\n\n[catalogs.tpch]\nkind = \"files\"\npath = {:?}\nformat = \"parquet\"\n\n[catalogs.pg]\nkind = \"postgres\"\nurl = {url:?}\n",
        tpch.display().to_string(),
    );
    let cluster = ProcessCluster::start(
        2,
        ProcessOptions {
            catalogs,
            slots: 2,
            env: vec![
                ("WEFT_PASSWORD_FILE".into(), passwords.display().to_string()),
                ("WEFT_ACCESS_RULES_FILE".into(), rules.display().to_string()),
                ("WEFT_ADMIN_USERS".into(), "root".into()),
            ],
            args: vec![],
            etcd: None,
            http: true,
            sign_in: Some(("root".into(), "root-password".into())),
            tls_ca: None,
        },
    )
    .await
    .expect("a cluster with access rules");
    let mut alice = sign_in(&cluster, "alice").await;

    // 1. SELECT *: no ssn, email masked, rows of the filter only.
    let batches = run_sql(&mut alice, "SELECT * FROM pg.public.accounts")
        .await
        .expect("alice reads accounts");
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["id", "owner", "region", "email"]);
    let want = pg_rows(
        &db,
        "SELECT id, owner, region, substr(email, 1, 2) || '***' FROM accounts \
         WHERE region = 'EU' OR owner = 'alice'",
    )
    .await
    .unwrap();
    assert!(want.len() > 100 && want.len() < 300, "{} rows", want.len());
    same_rows(&batch_rows(&batches), &want).expect("alice's accounts equal PostgreSQL's");
    // A predicate on a masked column sees the mask, not the value.
    let masked = rows(
        &mut alice,
        "SELECT count(*) FROM pg.public.accounts WHERE email LIKE 'user1%'",
    )
    .await;
    assert_eq!(masked, [["0"]]);

    // 2. The hidden column, by every route.
    for sql in [
        "SELECT ssn FROM pg.public.accounts",
        "SELECT count(ssn) FROM pg.public.accounts",
        "SELECT max(a.ssn) FROM pg.public.accounts a JOIN pg.public.payments p ON p.account_id = a.id",
        "SELECT v.ssn FROM (SELECT * FROM pg.public.accounts) v",
        "WITH v AS (SELECT * FROM pg.public.accounts) SELECT ssn FROM v",
        "SELECT id FROM pg.public.accounts WHERE ssn = 'ssn-100001'",
    ] {
        let e = refused(&mut alice, sql).await;
        assert!(e.contains("ssn"), "{sql}: {e}");
    }
    let e = refused(
        &mut alice,
        "CREATE VIEW v AS SELECT * FROM pg.public.accounts",
    )
    .await;
    assert!(
        e.to_lowercase().contains("read-only") || e.contains("not allowed"),
        "{e}"
    );
    let join = "SELECT a.region, count(*) AS n, sum(p.amount) AS total \
                FROM pg.public.accounts a JOIN pg.public.payments p ON p.account_id = a.id \
                GROUP BY a.region";
    let (plan, _) = explain(&mut alice, join).await;
    let scans: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("RemoteScanExec"))
        .collect();
    assert_eq!(scans.len(), 1, "the database runs the join whole:\n{plan}");
    assert!(scans[0].contains("JOIN"), "{plan}");
    assert!(
        scans[0].contains("'EU'") && scans[0].contains("'alice'"),
        "the row filter, with alice's name, is in the remote SQL:\n{plan}"
    );
    assert!(!plan.contains("ssn"), "{plan}");
    let want = pg_rows(
        &db,
        "SELECT a.region, count(*), sum(p.amount) FROM accounts a JOIN payments p ON p.account_id = a.id \
         WHERE a.region = 'EU' OR a.owner = 'alice' GROUP BY a.region",
    )
    .await
    .unwrap();
    same_rows(&rows(&mut alice, join).await, &want).expect("the join equals PostgreSQL's");
    // carol is in the same group: the filter names her.
    let mut carol = sign_in(&cluster, "carol").await;
    let (plan, _) = explain(&mut carol, join).await;
    assert!(
        plan.contains("'carol'") && !plan.contains("'alice'"),
        "{plan}"
    );

    // 3. lineitem's row filter on every worker.
    let sql = "SELECT l_linestatus, count(*) AS n, sum(l_quantity) AS q FROM lineitem GROUP BY 1 ORDER BY 1";
    let ctx = weft_integration_tests::tpch_single_node(tpch).await;
    let want = single_node_rows(
        &ctx,
        "SELECT l_linestatus, count(*) AS n, sum(l_quantity) AS q FROM lineitem \
         WHERE l_returnflag = 'R' GROUP BY 1 ORDER BY 1",
    )
    .await;
    let all = single_node_rows(&ctx, sql).await;
    assert_ne!(want, all, "the filter matters");
    let got = weft_integration_tests::canonical_rows(&run_sql(&mut alice, sql).await.unwrap());
    assert_eq!(got, want, "alice's lineitem is the filtered one");
    let (plan, text) = explain(&mut alice, sql).await;
    // Parquet strings plan as Utf8View.
    assert!(
        text.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("Filter: tpch.public.lineitem.l_returnflag = Utf8")
                && l.ends_with("(\"R\")")
        }),
        "the row filter is in the logical plan:\n{text}"
    );
    let scans: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("DataSourceExec") && l.contains("lineitem"))
        .collect();
    assert!(!scans.is_empty(), "{plan}");
    for scan in &scans {
        assert!(
            scan.contains("l_returnflag@"),
            "every task's scan filters:\n{plan}"
        );
    }
    let scan_stage = plan
        .split("\nStage ")
        .find(|s| s.contains("DataSourceExec") && s.contains("lineitem"))
        .expect("the stage that scans lineitem");
    let workers = scan_stage
        .lines()
        .filter(|l| l.starts_with("  task") && l.contains(" on "))
        .count();
    assert_eq!(workers, 2, "the scan runs on both workers:\n{plan}");

    // 4. Deny by default, the admin included; listings hide what is denied.
    let mut bob = sign_in(&cluster, "bob").await;
    for (sql, table) in [
        ("SELECT count(*) FROM lineitem", "tpch.public.lineitem"),
        ("SELECT * FROM pg.public.accounts", "pg.public.accounts"),
        (
            "SELECT * FROM tpch.public.nosuchtable",
            "tpch.public.nosuchtable",
        ),
    ] {
        let e = refused(&mut bob, sql).await;
        assert!(
            e.contains(&format!(
                "access denied: user \"bob\" may not read table {table}"
            )) && e.contains("rules.toml"),
            "{sql}: {e}"
        );
    }
    let token = bob.token().expect("bob's session token").clone();
    let status = status_of(&cluster, &token, "SELECT count(*) FROM orders").await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let listed = listed_tables(&mut bob).await;
    assert!(
        listed.iter().all(|t| t.starts_with("system.")),
        "{listed:?}"
    );
    let listed = rows(
        &mut bob,
        "SELECT table_catalog, table_name FROM information_schema.tables WHERE table_catalog <> 'system'",
    )
    .await;
    assert!(listed.is_empty(), "{listed:?}");
    let alice_sees = listed_tables(&mut alice).await;
    for t in [
        "pg.public.accounts",
        "pg.public.payments",
        "tpch.public.lineitem",
    ] {
        assert!(alice_sees.iter().any(|s| s == t), "{t} in {alice_sees:?}");
    }
    assert!(
        !alice_sees.iter().any(|s| s == "tpch.public.orders"),
        "{alice_sees:?}"
    );
    let mut root = cluster.client().await.expect("root");
    let e = refused(&mut root, "SELECT count(*) FROM orders").await;
    assert!(e.contains("user \"root\" may not read"), "{e}");

    // 5. A changed file is read again.
    std::fs::write(&rules, format!("{RULES}{BOB_ORDERS}")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let n = loop {
        match run_sql(&mut bob, "SELECT count(*) FROM orders").await {
            Ok(b) => break batch_rows(&b),
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("access denied"), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the new rule never applied: {e}"),
        }
    };
    assert_eq!(
        n,
        single_node_rows_as_cells(&ctx, "SELECT count(*) FROM orders").await
    );
    let e = refused(&mut bob, "SELECT count(*) FROM lineitem").await;
    assert!(e.contains("access denied"), "{e}");
    // A file that does not parse keeps the rules in force, and the log says why.
    std::fs::write(&rules, "[[tables]]\nallow = maybe\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rows(&mut bob, "SELECT count(*) FROM orders").await, n);
    assert!(
        weft_integration_tests::eventually(Duration::from_secs(10), || {
            cluster.coordinator.log_tail().contains("rules.toml")
        })
        .await,
        "the coordinator's log names the bad file:\n{}",
        cluster.coordinator.log_tail()
    );
}

async fn single_node_rows_as_cells(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> Vec<Vec<String>> {
    batch_rows(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
}

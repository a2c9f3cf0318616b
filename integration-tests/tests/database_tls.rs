//! TLS towards the databases, against the test PostgreSQL and MariaDB,
//! which serve TLS with a private CA (`scripts/lib/dbtls.sh`,
//! `WEFT_TEST_DB_CA`).
//!
//! `postgres_connections_are_encrypted`: with `require`, `verify-full`
//! (the CA file) and the default `prefer`, PostgreSQL itself reports the
//! connection encrypted (`pg_stat_ssl`); with `disable` it is not;
//! `verify-full` against another CA fails naming the certificate; a query
//! through a Weft cluster with `verify-full` answers as PostgreSQL does.
//!
//! `mysql_connections_are_encrypted`: a MariaDB user that may only connect
//! over TLS (`REQUIRE SSL`) is served with `require`, `verify-full` and
//! `prefer`, refused with `disable`; `verify-full` against another CA fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weft_common::config::{CatalogConfig, TlsMode};
use weft_connectors::mysql::MysqlSource;
use weft_connectors::postgres::PostgresSource;
use weft_integration_tests::{pg, ClusterOptions, TestCluster};

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

fn ca() -> PathBuf {
    PathBuf::from(std::env::var("WEFT_TEST_DB_CA").expect(
        "WEFT_TEST_DB_CA is not set: run the tests with scripts/test.sh (the databases serve TLS)",
    ))
}

/// A CA that did not issue the databases' certificates.
fn other_ca(dir: &std::path::Path) -> PathBuf {
    weft_common::tls::issue(dir, "unused", &["127.0.0.1".into()])
        .expect("another CA")
        .ca_cert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_are_encrypted() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let url = pg::create_database("weft_tls").await.expect("database");
        let admin = pg::connect(&url).await.expect("connect");
        admin
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g")
            .await
            .expect("table");
        let dir = tempfile::tempdir().unwrap();
        for (mode, ca_file, encrypted) in [
            (TlsMode::Require, None, true),
            (TlsMode::VerifyFull, Some(ca()), true),
            (TlsMode::Prefer, None, true),
            (TlsMode::Disable, None, false),
        ] {
            let mut config = pg::postgres_catalog(&url);
            config.tls = mode;
            config.tls_ca_file = ca_file;
            let source = Arc::new(PostgresSource::try_new("secure", config).expect("source"));
            let client = source.client().await.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            let ssl: bool = client
                .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
                .await
                .expect("pg_stat_ssl")
                .get(0);
            assert_eq!(ssl, encrypted, "{mode:?}");
        }
        let mut config = pg::postgres_catalog(&url);
        config.tls = TlsMode::VerifyFull;
        config.tls_ca_file = Some(other_ca(dir.path()));
        let source = Arc::new(PostgresSource::try_new("secure", config).expect("source"));
        let err = source.client().await.expect_err("another CA").to_string();
        assert!(err.contains("certificate") && err.contains("\"secure\""), "{err}");

        // Through a cluster: the workers' split reads use verify-full too.
        let mut config = pg::postgres_catalog(&url);
        config.tls = TlsMode::VerifyFull;
        config.tls_ca_file = Some(ca());
        let cluster = TestCluster::start(
            2,
            ClusterOptions {
                catalogs: pg::catalog_file(vec![("secure", CatalogConfig::Postgres(config))]),
                ..Default::default()
            },
        )
        .await
        .expect("cluster");
        let rows = weft_integration_tests::canonical_rows(
            &cluster
                .query("SELECT count(*), sum(id), max(v) FROM secure.public.t")
                .await
                .expect("query over TLS"),
        );
        assert_eq!(rows, vec!["500|125250|v99".to_string()]);
    })
    .await
    .expect("the test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_connections_are_encrypted() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let admin_url = weft_integration_tests::mysql::admin_url().expect("MariaDB");
        let mut admin = weft_integration_tests::mysql::connect(&admin_url)
            .await
            .expect("admin");
        let user = format!("tls{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        weft_integration_tests::mysql::execute(
            &mut admin,
            &format!(
                "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw-{user}' REQUIRE SSL; GRANT SELECT ON *.* TO '{user}'@'127.0.0.1'"
            ),
        )
        .await
        .expect("a user that needs TLS");
        let url = admin_url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(_, host)| format!("mysql://{user}:pw-{user}@{host}"))
            .expect("url");
        let dir = tempfile::tempdir().unwrap();
        let source = |mode: TlsMode, ca_file: Option<PathBuf>| {
            let mut config = pg::postgres_catalog(&url);
            config.tls = mode;
            config.tls_ca_file = ca_file;
            MysqlSource::try_new("secure", config).expect("source")
        };
        for (mode, ca_file) in [
            (TlsMode::Require, None),
            (TlsMode::VerifyFull, Some(ca())),
            (TlsMode::Prefer, None),
        ] {
            let rows = source(mode, ca_file)
                .query_text("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'")
                .await
                .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
            let cipher = rows[0][0].clone().unwrap_or_default();
            assert!(!cipher.is_empty(), "{mode:?}: no TLS cipher");
        }
        let err = source(TlsMode::Disable, None)
            .query_text("SELECT 1")
            .await
            .expect_err("plain text for a REQUIRE SSL user")
            .to_string();
        assert!(err.contains(&user), "{err}");
        let err = source(TlsMode::VerifyFull, Some(other_ca(dir.path())))
            .query_text("SELECT 1")
            .await
            .expect_err("another CA")
            .to_string();
        assert!(err.contains("certificate") || err.contains("Unknown"), "{err}");
        weft_integration_tests::mysql::execute(&mut admin, &format!("DROP USER '{user}'@'127.0.0.1'"))
            .await
            .expect("drop user");
    })
    .await
    .expect("the test timed out");
}

//! MariaDB / MySQL for tests: the server `scripts/test.sh` starts
//! (`WEFT_TEST_MYSQL`), a fresh database per test, and rows as text.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Value};

/// Environment variable holding the admin URL of the test MariaDB.
pub const TEST_MYSQL_ENV: &str = "WEFT_TEST_MYSQL";

/// The admin URL of the test server.
pub fn admin_url() -> anyhow::Result<String> {
    std::env::var(TEST_MYSQL_ENV).map_err(|_| {
        anyhow::anyhow!(
            "{TEST_MYSQL_ENV} is not set: run the tests with scripts/test.sh, which starts MariaDB, or export {TEST_MYSQL_ENV}=mysql://user:password@127.0.0.1:3306/db"
        )
    })
}

/// Connects to `url` over TCP.
pub async fn connect(url: &str) -> anyhow::Result<Conn> {
    let opts = mysql_async::OptsBuilder::from_opts(Opts::from_url(url)?).prefer_socket(false);
    Ok(Conn::new(opts).await?)
}

/// Creates an empty database with a unique name; returns its URL.
pub async fn create_database(prefix: &str) -> anyhow::Result<String> {
    let admin = admin_url()?;
    let name = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let mut conn = connect(&admin).await?;
    conn.query_drop(format!("CREATE DATABASE {name}")).await?;
    conn.disconnect().await?;
    Ok(crate::pg::with_database(&admin, &name))
}

/// Runs `sql` (statements separated by `;` run one by one).
pub async fn execute(conn: &mut Conn, sql: &str) -> anyhow::Result<()> {
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        conn.query_drop(statement).await?;
    }
    Ok(())
}

/// The rows of `sql` as text, `NULL` for nulls.
pub async fn my_rows(conn: &mut Conn, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let rows: Vec<mysql_async::Row> = conn.query(sql).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.as_ref(i) {
                    None | Some(Value::NULL) => "NULL".to_string(),
                    Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(other) => other.as_sql(true),
                })
                .collect()
        })
        .collect())
}

//! The SQL surface clients get: read-only.
//!
//! Queries, `EXPLAIN` (and `EXPLAIN ANALYZE` of a query), `SHOW`,
//! `DESCRIBE` and `SET` of a few presentation settings are allowed. DDL
//! (`CREATE`/`DROP` of tables, views, schemas, catalogs, functions,
//! including `CREATE EXTERNAL TABLE`), DML (`INSERT`, `UPDATE`, `DELETE`,
//! `CREATE TABLE AS`), `COPY ... TO`, transactions and SQL `PREPARE` are
//! refused before anything runs: data is reached only through the catalogs
//! configured on the coordinator, and nothing a client sends can create a
//! table over a server's files or write one.

use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{LogicalPlan, Statement};

/// Settings a client may `SET`: they change how results look, never where
/// data comes from or how much of the servers a query may use.
const SAFE_SETTINGS: &[&str] = &[
    "datafusion.execution.time_zone",
    "datafusion.execution.batch_size",
    "datafusion.sql_parser.",
    "datafusion.explain.",
    "datafusion.format.",
    "timezone",
    "time zone",
];

fn refused(what: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "{what} is not allowed: Weft is read-only for clients (queries, EXPLAIN, SHOW, DESCRIBE); \
         data is reached through the catalogs configured on the coordinator (--catalogs)"
    ))
}

/// Refuses anything but a read; see the module docs.
pub fn check_read_only(plan: &LogicalPlan) -> Result<()> {
    match plan {
        LogicalPlan::Ddl(ddl) => Err(refused(&format!("DDL ({})", ddl.name()))),
        LogicalPlan::Dml(dml) => Err(refused(&format!("{} into {}", dml.op, dml.table_name))),
        LogicalPlan::Copy(_) => Err(refused("COPY ... TO")),
        LogicalPlan::Explain(explain) => check_read_only(&explain.plan),
        LogicalPlan::Analyze(analyze) => check_read_only(&analyze.input),
        LogicalPlan::Statement(Statement::SetVariable(set)) => {
            let name = set.variable.to_ascii_lowercase();
            if SAFE_SETTINGS.iter().any(|safe| name.starts_with(safe)) {
                Ok(())
            } else {
                Err(DataFusionError::Plan(format!(
                    "SET {} is not allowed for clients: only presentation settings ({}) may be \
                     set; the servers' resources, files and catalogs are configured by the operator",
                    set.variable,
                    SAFE_SETTINGS.join(", ")
                )))
            }
        }
        LogicalPlan::Statement(other) => Err(refused(other.name())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn check(sql: &str) -> Result<()> {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_information_schema(true),
        );
        ctx.sql("CREATE TABLE t (a INT, b VARCHAR)")
            .await?
            .collect()
            .await?;
        let plan = ctx.state().create_logical_plan(sql).await?;
        check_read_only(&plan)
    }

    #[tokio::test]
    async fn reads_are_allowed() {
        for sql in [
            "SELECT a FROM t WHERE a > 1",
            "WITH x AS (SELECT a FROM t) SELECT count(*) FROM x",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN ANALYZE SELECT * FROM t",
            "SHOW TABLES",
            "DESCRIBE t",
            "SET datafusion.execution.time_zone = '+01:00'",
            "VALUES (1), (2)",
        ] {
            check(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[tokio::test]
    async fn writes_and_file_access_are_refused() {
        for (sql, expect) in [
            (
                "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
                "DDL",
            ),
            ("CREATE TABLE u (a INT)", "DDL"),
            ("CREATE VIEW v AS SELECT 1", "DDL"),
            ("DROP TABLE t", "DDL"),
            ("CREATE TABLE c AS SELECT 1", "DDL"),
            ("INSERT INTO t VALUES (1, 'x')", "Insert"),
            ("DELETE FROM t", "Delete"),
            ("UPDATE t SET a = 2", "Update"),
            (
                "COPY (SELECT 1) TO '/tmp/weft-copy.csv' STORED AS CSV",
                "COPY",
            ),
            ("COPY t TO '/tmp/weft-copy.parquet'", "COPY"),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1, 'x')", "Insert"),
            ("SET datafusion.runtime.memory_limit = '1T'", "SET"),
            ("SET datafusion.catalog.location = '/etc'", "SET"),
            ("PREPARE p AS SELECT 1", "not allowed"),
        ] {
            let err = check(sql).await.expect_err(sql).to_string();
            assert!(
                err.contains(expect) && err.contains("not allowed"),
                "{sql}: {err}"
            );
        }
    }
}

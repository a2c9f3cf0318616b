//! The `system` catalog: the coordinator's live state as SQL tables.
//!
//! ```sql
//! SELECT * FROM system.runtime.queries;   -- your queries of the last 10 minutes (an admin: everyone's)
//! SELECT * FROM system.runtime.stages WHERE query_id = '...';
//! SELECT * FROM system.runtime.workers;   -- the membership (state: active, or draining = no new tasks)
//! ```
//!
//! Each scan asks the workers for the task states of the queries it lists
//! (the same call `PollFlightInfo` makes) and ships the rows inside the plan
//! as an in-memory scan.

use std::sync::{Arc, Weak};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, StringBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::auth::Identity;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::{plan_err, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::engine::Engine;
use crate::queries::QueryState;

/// Name of the catalog.
pub const SYSTEM_CATALOG: &str = "system";
const RUNTIME_SCHEMA: &str = "runtime";
const TABLES: [&str; 3] = ["queries", "stages", "workers"];

/// The `system` catalog of a coordinator.
#[derive(Debug)]
pub struct SystemCatalog {
    engine: Weak<Engine>,
}

impl SystemCatalog {
    pub fn new(engine: Weak<Engine>) -> Self {
        Self { engine }
    }
}

impl CatalogProvider for SystemCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![RUNTIME_SCHEMA.to_string()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        (name == RUNTIME_SCHEMA).then(|| {
            Arc::new(RuntimeSchema {
                engine: Weak::clone(&self.engine),
            }) as _
        })
    }
}

#[derive(Debug)]
struct RuntimeSchema {
    engine: Weak<Engine>,
}

#[tonic::async_trait]
impl SchemaProvider for RuntimeSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let table = match name {
            "queries" => RuntimeTable::Queries,
            "stages" => RuntimeTable::Stages,
            "workers" => RuntimeTable::Workers,
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(RuntimeTableProvider {
            engine: Weak::clone(&self.engine),
            table,
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

#[derive(Debug, Clone, Copy)]
enum RuntimeTable {
    Queries,
    Stages,
    Workers,
}

impl RuntimeTable {
    fn schema(self) -> SchemaRef {
        let fields = match self {
            RuntimeTable::Queries => vec![
                Field::new("query_id", DataType::Utf8, false),
                Field::new("state", DataType::Utf8, false),
                Field::new("error", DataType::Utf8, true),
                Field::new("elapsed_ms", DataType::Int64, false),
                Field::new("stages", DataType::UInt32, false),
                Field::new("tasks_total", DataType::UInt64, false),
                Field::new("tasks_running", DataType::UInt64, false),
                Field::new("tasks_done", DataType::UInt64, false),
                Field::new("progress", DataType::Float64, false),
                Field::new("sql", DataType::Utf8, false),
                Field::new("user", DataType::Utf8, false),
            ],
            RuntimeTable::Stages => vec![
                Field::new("query_id", DataType::Utf8, false),
                Field::new("stage_id", DataType::UInt32, false),
                Field::new("tasks_total", DataType::UInt64, false),
                Field::new("tasks_running", DataType::UInt64, false),
                Field::new("tasks_done", DataType::UInt64, false),
                Field::new("tasks_failed", DataType::UInt64, false),
                Field::new("rows_out", DataType::UInt64, false),
                Field::new("bytes_out", DataType::UInt64, false),
            ],
            RuntimeTable::Workers => vec![
                Field::new("worker_id", DataType::Utf8, false),
                Field::new("address", DataType::Utf8, false),
                Field::new("slots", DataType::UInt32, false),
                Field::new("version", DataType::Utf8, false),
                Field::new("state", DataType::Utf8, false),
                Field::new("epoch", DataType::UInt64, false),
                // --memory-limit in bytes; NULL = unbounded.
                Field::new("memory_limit", DataType::UInt64, true),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

#[derive(Debug)]
struct RuntimeTableProvider {
    engine: Weak<Engine>,
    table: RuntimeTable,
}

impl RuntimeTableProvider {
    /// The rows `identity` may see: only their own queries (and their
    /// stages) unless they are an admin.
    async fn rows(&self, engine: &Engine, identity: &Identity) -> Result<RecordBatch> {
        let schema = self.table.schema();
        let columns: Vec<ArrayRef> = match self.table {
            RuntimeTable::Workers => {
                let members = engine.members.borrow().clone();
                let mut id = StringBuilder::new();
                let mut address = StringBuilder::new();
                let mut slots = UInt32Builder::new();
                let mut version = StringBuilder::new();
                let mut state = StringBuilder::new();
                let mut epoch = UInt64Builder::new();
                let mut memory_limit = UInt64Builder::new();
                for w in members.iter() {
                    id.append_value(&w.id);
                    address.append_value(&w.address);
                    slots.append_value(w.slots);
                    version.append_value(&w.version);
                    state.append_value(if w.draining { "draining" } else { "active" });
                    epoch.append_value(w.epoch);
                    memory_limit.append_option(w.memory_limit);
                }
                vec![
                    Arc::new(id.finish()),
                    Arc::new(address.finish()),
                    Arc::new(slots.finish()),
                    Arc::new(version.finish()),
                    Arc::new(state.finish()),
                    Arc::new(epoch.finish()),
                    Arc::new(memory_limit.finish()),
                ]
            }
            RuntimeTable::Queries | RuntimeTable::Stages => {
                let mut queries = engine.queries.all();
                queries.retain(|q| identity.may_access(&q.identity.user));
                queries.sort_by_key(|q| q.created);
                let progress =
                    futures::future::join_all(queries.iter().map(|q| q.progress(&engine.clients)))
                        .await;
                match self.table {
                    RuntimeTable::Queries => {
                        let mut id = StringBuilder::new();
                        let mut state = StringBuilder::new();
                        let mut error = StringBuilder::new();
                        let mut elapsed = Int64Builder::new();
                        let mut stages = UInt32Builder::new();
                        let (mut total, mut running, mut done) = (
                            UInt64Builder::new(),
                            UInt64Builder::new(),
                            UInt64Builder::new(),
                        );
                        let mut fraction = Float64Builder::new();
                        let mut sql = StringBuilder::new();
                        let mut user = StringBuilder::new();
                        for (q, p) in queries.iter().zip(&progress) {
                            let s = q.state();
                            id.append_value(&q.id);
                            state.append_value(s.name());
                            match &s {
                                QueryState::Failed(m) => error.append_value(m),
                                _ => error.append_null(),
                            }
                            elapsed.append_value(q.elapsed().as_millis() as i64);
                            stages.append_value(p.stages.len() as u32);
                            let sum = |f: fn(&crate::query::progress::StageProgress) -> usize| {
                                p.stages.iter().map(f).sum::<usize>() as u64
                            };
                            total.append_value(sum(|s| s.tasks_total));
                            running.append_value(sum(|s| s.tasks_running));
                            done.append_value(sum(|s| s.tasks_done));
                            fraction.append_value(if s == QueryState::Finished {
                                1.0
                            } else {
                                p.fraction_done()
                            });
                            sql.append_value(&q.sql);
                            user.append_value(&q.identity.user);
                        }
                        vec![
                            Arc::new(id.finish()),
                            Arc::new(state.finish()),
                            Arc::new(error.finish()),
                            Arc::new(elapsed.finish()),
                            Arc::new(stages.finish()),
                            Arc::new(total.finish()),
                            Arc::new(running.finish()),
                            Arc::new(done.finish()),
                            Arc::new(fraction.finish()),
                            Arc::new(sql.finish()),
                            Arc::new(user.finish()),
                        ]
                    }
                    _ => {
                        let mut id = StringBuilder::new();
                        let mut stage = UInt32Builder::new();
                        let mut counters: [UInt64Builder; 6] =
                            std::array::from_fn(|_| UInt64Builder::new());
                        for (q, p) in queries.iter().zip(&progress) {
                            for s in &p.stages {
                                id.append_value(&q.id);
                                stage.append_value(s.stage_id);
                                let values = [
                                    s.tasks_total as u64,
                                    s.tasks_running as u64,
                                    s.tasks_done as u64,
                                    s.tasks_failed as u64,
                                    s.rows_out,
                                    s.bytes_out,
                                ];
                                for (b, v) in counters.iter_mut().zip(values) {
                                    b.append_value(v);
                                }
                            }
                        }
                        let mut columns: Vec<ArrayRef> =
                            vec![Arc::new(id.finish()), Arc::new(stage.finish())];
                        columns.extend(counters.iter_mut().map(|b| Arc::new(b.finish()) as _));
                        columns
                    }
                }
            }
        };
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

#[tonic::async_trait]
impl TableProvider for RuntimeTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(engine) = self.engine.upgrade() else {
            return plan_err!("the coordinator is shutting down");
        };
        let identity = state
            .config()
            .options()
            .extensions
            .get::<Identity>()
            .cloned()
            .unwrap_or(Identity {
                user: String::new(),
                admin: false,
            });
        let batch = self.rows(&engine, &identity).await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema(),
            projection.cloned(),
        )?)
    }
}

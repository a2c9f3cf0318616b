//! Test harness for multi-node Weft: [`TestCluster`] starts a real coordinator
//! and N workers on `127.0.0.1:0`, registered in a real etcd (the one started
//! by `scripts/test.sh`, found through `WEFT_TEST_ETCD`) or in memory.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use weft_integration_tests::{ClusterOptions, TestCluster};
//! let cluster = TestCluster::start(3, ClusterOptions::default()).await?;
//! let batches = cluster.query("SELECT 1").await?;
//! # Ok(()) }
//! ```

pub mod chart;
pub mod mysql;
pub mod otlp;
pub mod pg;
pub mod process;
pub mod prometheus;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::FlightInfo;
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};
use weft_common::config::{CatalogConfig, CatalogsConfig, FileFormat};
use weft_common::registry::{EtcdRegistry, EtcdSettings, MemoryRegistry, Registry};
use weft_coordinator::{Coordinator, CoordinatorConfig, CoordinatorHandle};
use weft_worker::{Worker, WorkerConfig, WorkerHandle};

/// Environment variable holding the etcd endpoint of the test run.
pub const TEST_ETCD_ENV: &str = "WEFT_TEST_ETCD";

/// How a test cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub catalogs: CatalogsConfig,
    /// Register in etcd (`WEFT_TEST_ETCD`) rather than in memory.
    pub etcd: bool,
    pub slots: u32,
    pub lease_ttl_secs: i64,
    pub target_partitions: Option<usize>,
    pub max_tasks_per_stage: Option<usize>,
    pub compression: String,
    /// Clients read results from the workers.
    pub direct_results: bool,
    /// Admission: queries running at once, and how long one may queue.
    pub max_running_queries: Option<usize>,
    pub queue_timeout: Duration,
    /// A running query whose results nobody starts reading within this
    /// time is cancelled (`--result-timeout`).
    pub result_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            catalogs: CatalogsConfig::default(),
            etcd: true,
            slots: 2,
            lease_ttl_secs: 2,
            target_partitions: None,
            max_tasks_per_stage: None,
            compression: String::new(),
            direct_results: false,
            max_running_queries: None,
            queue_timeout: Duration::from_secs(300),
            result_timeout: Duration::from_secs(300),
        }
    }
}

/// A coordinator and workers in this process, talking over real sockets.
#[derive(Debug)]
pub struct TestCluster {
    pub coordinator: CoordinatorHandle,
    workers: Vec<Option<WorkerHandle>>,
    options: ClusterOptions,
    memory: Option<Arc<MemoryRegistry>>,
    /// etcd key prefix private to this cluster (tests share one etcd).
    prefix: String,
    /// The coordinator's registry (kept alive for its watch).
    _coordinator_registry: Option<Arc<EtcdRegistry>>,
}

fn etcd_endpoints() -> anyhow::Result<Vec<String>> {
    let v = std::env::var(TEST_ETCD_ENV).map_err(|_| {
        anyhow::anyhow!(
            "{TEST_ETCD_ENV} is not set: run the tests with scripts/test.sh, which starts etcd, or export {TEST_ETCD_ENV}=http://127.0.0.1:2379"
        )
    })?;
    Ok(v.split(',').map(str::to_string).collect())
}

impl TestCluster {
    pub async fn start(workers: usize, options: ClusterOptions) -> anyhow::Result<Self> {
        let prefix = format!("/weft-test/{}/workers/", uuid::Uuid::new_v4().simple());
        let (members, memory, coordinator_registry) = if options.etcd {
            let mut settings = EtcdSettings::new(etcd_endpoints()?);
            settings.lease_ttl_secs = options.lease_ttl_secs;
            settings.prefix = prefix.clone();
            let registry =
                Arc::new(EtcdRegistry::connect(settings, Duration::from_secs(10)).await?);
            registry.start_watch().await?;
            (registry.members(), None, Some(registry))
        } else {
            let registry = Arc::new(MemoryRegistry::new());
            (registry.members(), Some(registry), None)
        };
        let mut config = CoordinatorConfig::new("127.0.0.1:0".parse()?, options.catalogs.clone());
        config.engine.target_partitions = options.target_partitions;
        config.engine.max_tasks_per_stage = options.max_tasks_per_stage;
        config.engine.compression = options.compression.clone();
        config.engine.direct_results = options.direct_results;
        config.engine.max_running_queries = options.max_running_queries;
        config.engine.queue_timeout = options.queue_timeout;
        config.engine.result_timeout = options.result_timeout;
        let coordinator = Coordinator::start(config, members).await?;
        let mut cluster = Self {
            coordinator,
            workers: Vec::new(),
            options,
            memory,
            prefix,
            _coordinator_registry: coordinator_registry,
        };
        for _ in 0..workers {
            cluster.add_worker().await?;
        }
        cluster.wait_for_workers(workers).await?;
        Ok(cluster)
    }

    /// Starts one more worker; returns its index.
    pub async fn add_worker(&mut self) -> anyhow::Result<usize> {
        let registry: Arc<dyn Registry> = match &self.memory {
            Some(m) => Arc::clone(m) as Arc<dyn Registry>,
            None => {
                let mut settings = EtcdSettings::new(etcd_endpoints()?);
                settings.lease_ttl_secs = self.options.lease_ttl_secs;
                settings.prefix = self.prefix.clone();
                Arc::new(EtcdRegistry::connect(settings, Duration::from_secs(10)).await?)
            }
        };
        let mut config = WorkerConfig::new("127.0.0.1:0".parse()?);
        config.slots = self.options.slots;
        config.catalogs = self.options.catalogs.clone();
        let worker = Worker::start(config, registry).await?;
        self.workers.push(Some(worker));
        Ok(self.workers.len() - 1)
    }

    /// Live workers as the coordinator sees them.
    pub fn member_ids(&self) -> Vec<String> {
        self.coordinator
            .engine()
            .members
            .borrow()
            .iter()
            .map(|w| w.id.clone())
            .collect()
    }

    /// Waits until the coordinator sees exactly `n` workers.
    pub async fn wait_for_workers(&self, n: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let count = self.member_ids().len();
            if count == n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("coordinator sees {count} workers, expected {n}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn worker(&self, i: usize) -> Option<&WorkerHandle> {
        self.workers.get(i).and_then(|w| w.as_ref())
    }

    pub fn live_workers(&self) -> impl Iterator<Item = &WorkerHandle> {
        self.workers.iter().flatten()
    }

    /// Kills worker `i` abruptly (its lease is left to expire).
    pub fn kill_worker(&mut self, i: usize) -> Option<String> {
        let w = self.workers.get_mut(i)?.take()?;
        let id = w.id().to_string();
        w.kill();
        Some(id)
    }

    pub async fn client(&self) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
        connect(&format!("http://{}", self.coordinator.addr())).await
    }

    /// Runs `sql` and collects every endpoint's batches.
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
        let mut client = self.client().await?;
        run_sql(&mut client, sql).await
    }
}

impl TestCluster {
    /// The `distributed_plan` row of `EXPLAIN sql`: every stage with its
    /// fragment, remote scans with the SQL their source runs.
    pub async fn explain(&self, sql: &str) -> anyhow::Result<String> {
        let batches = self.query(&format!("EXPLAIN {sql}")).await?;
        let rows = format_rows(&batches, |v| v.to_string());
        rows.into_iter()
            .find(|r| r.first().map(String::as_str) == Some("distributed_plan"))
            .and_then(|r| r.get(1).cloned())
            .ok_or_else(|| anyhow::anyhow!("EXPLAIN returned no distributed_plan row"))
    }
}

/// A Flight SQL client for `http://host:port`.
pub async fn connect(url: &str) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let channel = Endpoint::from_shared(url.to_string())?.connect().await?;
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(weft_common::flight::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(weft_common::flight::MAX_MESSAGE_SIZE);
    Ok(FlightSqlServiceClient::new_from_inner(inner))
}

/// A Flight SQL client of an `https://` coordinator verified with the CA in `ca`.
pub async fn connect_tls(url: &str, ca: &Path) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca)?));
    let channel = Endpoint::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect()
        .await?;
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(weft_common::flight::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(weft_common::flight::MAX_MESSAGE_SIZE);
    Ok(FlightSqlServiceClient::new_from_inner(inner))
}

/// Executes `sql` and reads all endpoints in order.
pub async fn run_sql(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> anyhow::Result<Vec<RecordBatch>> {
    let info = client.execute(sql.to_string(), None).await?;
    read_all(client, &info).await
}

/// Reads every endpoint of a FlightInfo, checking each stream's schema equals
/// the announced one (as ADBC does).
pub async fn read_all(
    client: &mut FlightSqlServiceClient<Channel>,
    info: &FlightInfo,
) -> anyhow::Result<Vec<RecordBatch>> {
    let announced = info.clone().try_decode_schema()?;
    let mut out = Vec::new();
    for endpoint in &info.endpoint {
        let Some(ticket) = endpoint.ticket.clone() else {
            continue;
        };
        // An endpoint with a location is read there (direct results).
        let mut stream = match endpoint.location.first() {
            Some(location) => {
                let url = weft_common::flight::location_url(&location.uri)
                    .ok_or_else(|| anyhow::anyhow!("unsupported location {}", location.uri))?;
                connect(&url).await?.do_get(ticket).await?
            }
            None => client.do_get(ticket).await?,
        };
        while let Some(batch) = stream.try_next().await? {
            if batch.schema().as_ref() != &announced {
                anyhow::bail!(
                    "endpoint returned inconsistent schema: announced {announced:?}, streamed {:?}",
                    batch.schema()
                );
            }
            out.push(batch);
        }
    }
    Ok(out)
}

/// Rows of Arrow batches as strings (`NULL` for nulls); floats are passed
/// through `float` first.
pub fn format_rows(batches: &[RecordBatch], float: impl Fn(f64) -> String) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let columns: Vec<ArrayRef> = b.columns().to_vec();
        let formatters: Vec<_> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formattable column"))
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = columns
                .iter()
                .zip(&formatters)
                .map(|(c, f)| match c.data_type() {
                    DataType::Float32 | DataType::Float64 if !c.is_null(r) => {
                        float(f.value(r).to_string().parse().unwrap_or(f64::NAN))
                    }
                    _ => f.value(r).to_string(),
                })
                .collect();
            rows.push(cells);
        }
    }
    rows
}

/// Rows as strings, floats rounded to 9 significant digits, for comparison.
pub fn canonical_rows(batches: &[RecordBatch]) -> Vec<String> {
    format_rows(batches, |v| format!("{v:.8e}"))
        .into_iter()
        .map(|cells| cells.join("|"))
        .collect()
}

/// TPC-H data shared by the tests of one process, generated once.
pub fn tpch_dir(scale: f64, files: usize) -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("weft-tpch-")
            .tempdir()
            .expect("temp dir");
        weft_common::sample::generate_tpch(dir.path(), scale, files).expect("generate TPC-H");
        let path = dir.path().to_path_buf();
        (dir, path)
    });
    path
}

/// Single-node DataFusion over the TPC-H tables of `dir` (2 partitions):
/// the independent answer the distributed results are checked against.
pub async fn tpch_single_node(dir: &Path) -> datafusion::prelude::SessionContext {
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    for t in weft_common::sample::TPCH_TABLES {
        ctx.register_parquet(
            t,
            dir.join(t).to_string_lossy().as_ref(),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register table");
    }
    ctx
}

/// Runs a query script on DataFusion; returns the last statement's rows
/// that has columns (q15 is three statements).
pub async fn single_node_rows(
    ctx: &datafusion::prelude::SessionContext,
    text: &str,
) -> Vec<String> {
    let mut rows = Vec::new();
    for s in split_statements(text) {
        let batches = ctx
            .sql(&s)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        if !batches.is_empty() && batches[0].num_columns() > 0 {
            rows = canonical_rows(&batches);
        }
    }
    rows
}

/// A catalog file with one `files` catalog named `name`, the default.
pub fn files_catalog(name: &str, path: &Path) -> CatalogsConfig {
    let mut c = CatalogsConfig::default();
    c.catalogs.insert(
        name.to_string(),
        CatalogConfig::Files {
            path: path.to_string_lossy().to_string(),
            format: FileFormat::Parquet,
            storage: Default::default(),
        },
    );
    c.default_catalog = Some(name.to_string());
    c
}

/// [`files_catalog`] as the text of a catalog file (`--catalogs`), for
/// clusters of separate processes.
pub fn files_catalog_toml(name: &str, path: &Path) -> String {
    format!(
        "default_catalog = {name:?}\n\n[catalogs.{name}]\nkind = \"files\"\npath = {:?}\nformat = \"parquet\"\n",
        path.to_string_lossy()
    )
}

/// The TPC-H query texts shipped with the tests (`q1` .. `q22`).
pub fn tpch_query(n: usize) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tpch/queries/q{n}.sql"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Splits a script into statements (q15 is three).
pub fn split_statements(text: &str) -> Vec<String> {
    datafusion::sql::parser::DFParser::parse_sql(text)
        .expect("valid SQL")
        .into_iter()
        .map(|s| s.to_string())
        .collect()
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `text` with each whole word naming a table of `catalogs` (table ->
/// catalog) replaced by `catalog.public.table` (also where the word is a
/// column alias, as `nation` in TPC-H q8 and q9).
pub fn qualify_tables(text: &str, catalogs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match catalogs.iter().find(|(t, _)| t == word) {
            Some((t, c)) => out.push_str(&format!("{c}.public.{t}")),
            None => out.push_str(word),
        }
        word.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

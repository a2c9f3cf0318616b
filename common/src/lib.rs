//! Shared building blocks of Weft's coordinator and workers.
//!
//! - [`config`]: the catalog file (TOML) and `${ENV:NAME}` substitution;
//! - [`auth`]: the cluster secret, node tokens, signed result grants;
//! - [`catalog`]: registers catalogs into a DataFusion session;
//! - [`registry`]: worker membership, in etcd or in memory;
//! - [`exchange`]: [`exchange::StageReaderExec`] (reads another stage over
//!   Flight) and [`exchange::PartitionSubsetExec`] (a task's share of a stage);
//! - [`codec`]: the datafusion-proto extension codec for those nodes;
//! - [`flight`]: Flight client pool, action names, error mapping;
//! - [`session`]: the DataFusion settings distributed execution needs;
//! - [`sample`]: TPC-H sample data;
//! - [`tls`]: TLS for the Flight endpoints, mutual TLS between nodes, `weft certs`;
//! - [`telemetry`]: metrics (Prometheus), the `/metrics` `/healthz` `/readyz`
//!   server, OpenTelemetry traces.
//!
//! ```
//! use weft_common::config::CatalogsConfig;
//! let c = CatalogsConfig::parse(
//!     "[catalogs.tpch]\nkind = \"files\"\npath = \"/data/tpch\"\n",
//!     std::path::Path::new("catalogs.toml"),
//! ).unwrap();
//! assert_eq!(c.effective_default(), Some("tpch"));
//! ```

pub mod auth;
pub mod catalog;
pub mod codec;
pub mod config;
pub mod exchange;
pub mod flight;
pub mod object_stores;
pub mod registry;
pub mod sample;
pub mod session;
pub mod telemetry;
pub mod tls;

/// Version string workers announce.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

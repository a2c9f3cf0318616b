//! TPC-H sample data: generated with the `tpchgen` crates and written as
//! Parquet, one directory per table, so a `files` catalog can serve it.
//!
//! Used by `weft local` (the built-in `sample` catalog), the tests and the
//! benchmarks. Strings are written as `Utf8` (see [`crate::session`]).

use std::path::Path;
use std::sync::Arc;

use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow,
    RecordBatchIterator, RegionArrow, SupplierArrow,
};

/// The eight TPC-H tables.
pub const TPCH_TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// Writes TPC-H at `scale` under `dir/<table>/part-<i>.parquet`; tables with
/// more than ~100k rows at this scale are split into `files` files so several
/// tasks can scan them. Returns the number of rows written.
pub fn generate_tpch(dir: &Path, scale: f64, files: usize) -> std::io::Result<u64> {
    let files = files.max(1) as i32;
    let mut rows = 0;
    for table in TPCH_TABLES {
        let table_dir = dir.join(table);
        std::fs::create_dir_all(&table_dir)?;
        let parts = match table {
            "nation" | "region" => 1,
            _ => files,
        };
        for part in 1..=parts {
            let iter: Box<dyn RecordBatchIterator> = match table {
                "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(
                    scale, part, parts,
                ))),
                "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(
                    scale, part, parts,
                ))),
                "nation" => Box::new(NationArrow::new(NationGenerator::new(scale, part, parts))),
                "orders" => Box::new(OrderArrow::new(OrderGenerator::new(scale, part, parts))),
                "part" => Box::new(PartArrow::new(PartGenerator::new(scale, part, parts))),
                "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(
                    scale, part, parts,
                ))),
                "region" => Box::new(RegionArrow::new(RegionGenerator::new(scale, part, parts))),
                _ => Box::new(SupplierArrow::new(SupplierGenerator::new(
                    scale, part, parts,
                ))),
            };
            let path = table_dir.join(format!("part-{part}.parquet"));
            rows += write_parquet(&path, iter)?;
        }
    }
    Ok(rows)
}

fn plain_strings(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8View => Field::new(f.name(), DataType::Utf8, f.is_nullable()),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

fn write_parquet(path: &Path, iter: Box<dyn RecordBatchIterator>) -> std::io::Result<u64> {
    let schema = plain_strings(iter.schema());
    let file = std::fs::File::create(path)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
        .map_err(std::io::Error::other)?;
    let mut rows = 0u64;
    for batch in iter {
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), columns).map_err(std::io::Error::other)?;
        rows += batch.num_rows() as u64;
        writer.write(&batch).map_err(std::io::Error::other)?;
    }
    writer.close().map_err(std::io::Error::other)?;
    Ok(rows)
}

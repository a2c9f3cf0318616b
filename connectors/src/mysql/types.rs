//! MySQL/MariaDB column types to Arrow, and the decoder that turns text
//! protocol rows into Arrow arrays.
//!
//! Rows arrive as the text protocol sends them (every value as bytes, NULL
//! apart). Each column is gathered raw into a binary builder and converted
//! once per batch with Arrow's vectorized casts (text to integer, decimal,
//! float, date, time, timestamp), so no per-value objects are built.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, BinaryBuilder, StringArray};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow::util::display::FormatOptions;

/// How a column's values arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MyWire {
    /// Text, converted to the column's Arrow type.
    Text,
    /// Text dates and times; MySQL's zero dates (`0000-00-00`) become NULL.
    Temporal,
    /// Raw bytes (binary strings and blobs).
    Binary,
}

impl MyWire {
    pub fn name(self) -> String {
        match self {
            MyWire::Text => "text",
            MyWire::Temporal => "temporal",
            MyWire::Binary => "binary",
        }
        .to_string()
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => MyWire::Text,
            "temporal" => MyWire::Temporal,
            "binary" => MyWire::Binary,
            _ => return None,
        })
    }
}

/// A column of a MySQL table as Weft reads it.
#[derive(Debug, Clone)]
pub struct MyColumn {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    pub wire: MyWire,
    /// How the column is selected (`` `c` `` or a conversion of it).
    pub select: String,
    /// Read through a conversion to text (an otherwise unsupported type).
    pub as_text: bool,
    /// Part of the primary key.
    pub primary_key: bool,
}

/// Quotes an identifier for MySQL.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The Arrow type, wire and select expression of a column with
/// `information_schema.COLUMNS` `DATA_TYPE`, `COLUMN_TYPE`, precision and
/// scale; `None` for types Weft does not map.
pub fn map_column(
    name: &str,
    data_type: &str,
    column_type: &str,
    precision: Option<u64>,
    scale: Option<u64>,
) -> Option<(DataType, MyWire, String)> {
    let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
    let q = quote_ident(name);
    let text = |t: DataType| Some((t, MyWire::Text, q.clone()));
    match data_type.to_ascii_lowercase().as_str() {
        "tinyint" if unsigned => text(DataType::UInt8),
        "tinyint" => text(DataType::Int8),
        "smallint" if unsigned => text(DataType::UInt16),
        "smallint" => text(DataType::Int16),
        "mediumint" | "int" | "integer" if unsigned => text(DataType::UInt32),
        "mediumint" | "int" | "integer" => text(DataType::Int32),
        "bigint" if unsigned => text(DataType::UInt64),
        "bigint" => text(DataType::Int64),
        "decimal" | "numeric" => {
            let p = precision.unwrap_or(10).clamp(1, 76) as u8;
            let s = scale.unwrap_or(0).min(p as u64) as i8;
            if p <= 38 {
                text(DataType::Decimal128(p, s))
            } else {
                text(DataType::Decimal256(p, s))
            }
        }
        "float" => text(DataType::Float32),
        "double" | "real" => text(DataType::Float64),
        "bit" => Some((
            DataType::UInt64,
            MyWire::Text,
            format!("CAST({q} AS UNSIGNED)"),
        )),
        "year" => text(DataType::Int16),
        "date" => Some((DataType::Date32, MyWire::Temporal, q)),
        "datetime" => Some((
            DataType::Timestamp(TimeUnit::Microsecond, None),
            MyWire::Temporal,
            q,
        )),
        // Sessions run with time_zone = '+00:00', so values arrive in UTC.
        "timestamp" => Some((
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            MyWire::Temporal,
            q,
        )),
        "time" => text(DataType::Time64(TimeUnit::Microsecond)),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        | "json" | "uuid" | "inet4" | "inet6" => text(DataType::Utf8),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            Some((DataType::Binary, MyWire::Binary, q))
        }
        _ => None,
    }
}

/// Gathers text protocol rows and turns them into batches.
#[derive(Debug)]
pub struct TextDecoder {
    schema: SchemaRef,
    wire: Vec<MyWire>,
    columns: Vec<BinaryBuilder>,
    rows: usize,
}

const ZERO_DATE: &[u8] = b"0000-00-00";

impl TextDecoder {
    pub fn try_new(schema: SchemaRef, wire: Vec<MyWire>) -> Result<Self, String> {
        if wire.len() != schema.fields().len() {
            return Err(format!(
                "{} wire types for {} columns",
                wire.len(),
                schema.fields().len()
            ));
        }
        let columns = wire.iter().map(|_| BinaryBuilder::new()).collect();
        Ok(Self {
            schema,
            wire,
            columns,
            rows: 0,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends one row: each value's text (or bytes), `None` for NULL.
    pub fn push_row<'a>(
        &mut self,
        values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    ) -> Result<(), String> {
        if self.columns.is_empty() {
            // `SELECT 1` for a scan that needs no column (count(*)).
            self.rows += 1;
            return Ok(());
        }
        if values.len() != self.columns.len() {
            return Err(format!(
                "row has {} values, expected {}",
                values.len(),
                self.columns.len()
            ));
        }
        for ((builder, wire), value) in self.columns.iter_mut().zip(&self.wire).zip(values) {
            match value {
                Some(v) if *wire == MyWire::Temporal && v.starts_with(ZERO_DATE) => {
                    builder.append_null()
                }
                Some(v) => builder.append_value(v),
                None => builder.append_null(),
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The gathered rows as a batch; errors name the column and the value.
    pub fn flush(&mut self) -> Result<RecordBatch, String> {
        let options = CastOptions {
            safe: false,
            format_options: FormatOptions::default(),
        };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for ((builder, wire), field) in self
            .columns
            .iter_mut()
            .zip(&self.wire)
            .zip(self.schema.fields())
        {
            let raw: BinaryArray = builder.finish();
            let array: ArrayRef = match (wire, field.data_type()) {
                (MyWire::Binary, DataType::Binary) => Arc::new(raw),
                (_, target) => {
                    let text = StringArray::try_from_binary(raw)
                        .map_err(|e| format!("column {}: value is not UTF-8: {e}", field.name()))?;
                    if target == &DataType::Utf8 {
                        Arc::new(text)
                    } else {
                        cast_with_options(&text, target, &options).map_err(|e| {
                            format!(
                                "column {}: cannot read value as {target}: {e}",
                                field.name()
                            )
                        })?
                    }
                }
            };
            if !field.is_nullable() && array.null_count() > 0 {
                return Err(format!(
                    "column {} is NOT NULL in the database but a value read as NULL (a zero date?)",
                    field.name()
                ));
            }
            arrays.push(array);
        }
        let rows = self.rows;
        self.rows = 0;
        RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use arrow::util::pretty::pretty_format_batches;

    #[test]
    fn maps_types() {
        let m = |dt: &str, ct: &str, p, s| map_column("c", dt, ct, p, s);
        assert_eq!(
            m("int", "int(10) unsigned", None, None).unwrap().0,
            DataType::UInt32
        );
        assert_eq!(
            m("bigint", "bigint(20)", None, None).unwrap().0,
            DataType::Int64
        );
        assert_eq!(
            m("decimal", "decimal(12,2)", Some(12), Some(2)).unwrap().0,
            DataType::Decimal128(12, 2)
        );
        assert_eq!(
            m("decimal", "decimal(65,4)", Some(65), Some(4)).unwrap().0,
            DataType::Decimal256(65, 4)
        );
        assert_eq!(
            m("bit", "bit(3)", None, None).unwrap().2,
            "CAST(`c` AS UNSIGNED)"
        );
        assert_eq!(m("date", "date", None, None).unwrap().1, MyWire::Temporal);
        assert!(m("geometry", "geometry", None, None).is_none());
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }

    #[test]
    fn decodes_text_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("d", DataType::Decimal128(6, 2), true),
            Field::new("dt", DataType::Date32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("s", DataType::Utf8, true),
            Field::new("b", DataType::Binary, true),
        ]));
        let wire = vec![
            MyWire::Text,
            MyWire::Text,
            MyWire::Temporal,
            MyWire::Temporal,
            MyWire::Text,
            MyWire::Binary,
        ];
        let mut d = TextDecoder::try_new(schema, wire).unwrap();
        let row: Vec<Option<&[u8]>> = vec![
            Some(b"-7"),
            Some(b"1234.50"),
            Some(b"2018-01-02"),
            Some(b"2018-01-02 03:04:05.250000"),
            Some("héllo".as_bytes()),
            Some(&[0, 255]),
        ];
        d.push_row(row.into_iter()).unwrap();
        let row: Vec<Option<&[u8]>> = vec![
            None,
            None,
            Some(b"0000-00-00"),
            Some(b"0000-00-00 00:00:00"),
            None,
            None,
        ];
        d.push_row(row.into_iter()).unwrap();
        let batch = d.flush().unwrap();
        let text = pretty_format_batches(&[batch]).unwrap().to_string();
        assert!(
            text.contains("| -7 | 1234.50 | 2018-01-02 | 2018-01-02T03:04:05.250 | héllo | 00ff |"),
            "{text}"
        );
        assert_eq!(d.rows(), 0);

        let row: Vec<Option<&[u8]>> = vec![Some(b"x"), None, None, None, None, None];
        d.push_row(row.into_iter()).unwrap();
        let err = d.flush().unwrap_err();
        assert!(err.contains("column i"), "{err}");
    }
}

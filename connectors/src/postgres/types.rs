//! PostgreSQL types to Arrow.
//!
//! | PostgreSQL                         | Arrow                              | wire type     |
//! |------------------------------------|------------------------------------|---------------|
//! | `boolean`                          | `Boolean`                          | `bool`        |
//! | `smallint` / `integer` / `bigint`  | `Int16` / `Int32` / `Int64`        | `int2/4/8`    |
//! | `oid`                              | `Int64`                            | `oid`         |
//! | `real` / `double precision`        | `Float32` / `Float64`              | `float4/8`    |
//! | `numeric(p,s)`, p <= 38            | `Decimal128(p, s)`                 | `numeric`     |
//! | `numeric` (no precision)           | `Decimal128(38, 10)`               | `numeric`     |
//! | `numeric(p,s)`, p > 38             | `Utf8` (read as text)              | `text`        |
//! | `text`, `varchar`, `name`, `"char"`| `Utf8`                             | `text`        |
//! | `char(n)`                          | `Utf8`, trailing blanks removed    | `bpchar`      |
//! | `json`, `xml`, enums               | `Utf8`                             | `text`        |
//! | `jsonb`                            | `Utf8`                             | `jsonb`       |
//! | `uuid`                             | `Utf8` (canonical hyphenated form) | `uuid`        |
//! | `bytea`                            | `Binary`                           | `bytea`       |
//! | `date`                             | `Date32`                           | `date`        |
//! | `time`                             | `Time64(µs)`                       | `time`        |
//! | `timestamp`                        | `Timestamp(µs)`                    | `timestamp`   |
//! | `timestamptz`                      | `Timestamp(µs, "UTC")`             | `timestamptz` |
//! | `interval`                         | `Interval(MonthDayNano)`           | `interval`    |
//! | one-dimensional arrays of the above| `List(<element>)`                  | `array:<el>`  |
//! | domains                            | as their base type                 |               |
//! | anything else (`money`, `inet`, …) | `Utf8` via `::text`, or skipped    | `text`        |
//!
//! Which of the last two is chosen by the catalog's `unsupported_types`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};

/// How a column's values arrive in the binary COPY stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireType {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    Text,
    /// `char(n)`: sent blank-padded; read without the padding, as
    /// PostgreSQL's own `::text` cast does.
    Bpchar,
    Jsonb,
    Uuid,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    Array(Box<WireType>),
}

impl WireType {
    pub fn name(&self) -> String {
        match self {
            WireType::Bool => "bool".into(),
            WireType::Int2 => "int2".into(),
            WireType::Int4 => "int4".into(),
            WireType::Int8 => "int8".into(),
            WireType::Oid => "oid".into(),
            WireType::Float4 => "float4".into(),
            WireType::Float8 => "float8".into(),
            WireType::Numeric => "numeric".into(),
            WireType::Text => "text".into(),
            WireType::Bpchar => "bpchar".into(),
            WireType::Jsonb => "jsonb".into(),
            WireType::Uuid => "uuid".into(),
            WireType::Bytea => "bytea".into(),
            WireType::Date => "date".into(),
            WireType::Time => "time".into(),
            WireType::Timestamp => "timestamp".into(),
            WireType::TimestampTz => "timestamptz".into(),
            WireType::Interval => "interval".into(),
            WireType::Array(e) => format!("array:{}", e.name()),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => WireType::Bool,
            "int2" => WireType::Int2,
            "int4" => WireType::Int4,
            "int8" => WireType::Int8,
            "oid" => WireType::Oid,
            "float4" => WireType::Float4,
            "float8" => WireType::Float8,
            "numeric" => WireType::Numeric,
            "text" => WireType::Text,
            "bpchar" => WireType::Bpchar,
            "jsonb" => WireType::Jsonb,
            "uuid" => WireType::Uuid,
            "bytea" => WireType::Bytea,
            "date" => WireType::Date,
            "time" => WireType::Time,
            "timestamp" => WireType::Timestamp,
            "timestamptz" => WireType::TimestampTz,
            "interval" => WireType::Interval,
            other => WireType::Array(Box::new(Self::parse(other.strip_prefix("array:")?)?)),
        })
    }
}

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
pub struct PgColumn {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    pub wire: WireType,
    /// Read through `::text` because the type has no direct mapping.
    pub as_text: bool,
    /// The PostgreSQL type, for messages.
    pub pg_type: String,
}

/// Maps a PostgreSQL type (`typname`, `atttypmod`) to Arrow; `None` when the
/// type has no direct mapping.
pub fn map_scalar(typname: &str, typmod: i32) -> Option<(DataType, WireType)> {
    Some(match typname {
        "bool" => (DataType::Boolean, WireType::Bool),
        "int2" => (DataType::Int16, WireType::Int2),
        "int4" => (DataType::Int32, WireType::Int4),
        "int8" => (DataType::Int64, WireType::Int8),
        "oid" => (DataType::Int64, WireType::Oid),
        "float4" => (DataType::Float32, WireType::Float4),
        "float8" => (DataType::Float64, WireType::Float8),
        "numeric" => {
            if typmod < 4 {
                (DataType::Decimal128(38, 10), WireType::Numeric)
            } else {
                let precision = ((typmod - 4) >> 16) & 0xffff;
                let scale = (typmod - 4) & 0xffff;
                // PostgreSQL 15 allows negative or larger-than-precision scales
                // (stored as 11-bit signed values); those are read as text.
                if precision > 38 || scale > precision {
                    return None;
                }
                (
                    DataType::Decimal128(precision as u8, scale as i8),
                    WireType::Numeric,
                )
            }
        }
        "text" | "varchar" | "name" | "char" | "json" | "xml" | "citext" => {
            (DataType::Utf8, WireType::Text)
        }
        "bpchar" => (DataType::Utf8, WireType::Bpchar),
        "jsonb" => (DataType::Utf8, WireType::Jsonb),
        "uuid" => (DataType::Utf8, WireType::Uuid),
        "bytea" => (DataType::Binary, WireType::Bytea),
        "date" => (DataType::Date32, WireType::Date),
        "time" => (DataType::Time64(TimeUnit::Microsecond), WireType::Time),
        "timestamp" => (
            DataType::Timestamp(TimeUnit::Microsecond, None),
            WireType::Timestamp,
        ),
        "timestamptz" => (
            DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
            WireType::TimestampTz,
        ),
        "interval" => (
            DataType::Interval(IntervalUnit::MonthDayNano),
            WireType::Interval,
        ),
        _ => return None,
    })
}

/// Maps a column given its catalog row. `elem` is the element type of an
/// array, `base` the base type of a domain, `is_enum` whether the type is an enum.
pub fn map_column(
    typname: &str,
    typmod: i32,
    base: Option<&str>,
    elem: Option<&str>,
    is_enum: bool,
) -> Option<(DataType, WireType)> {
    if is_enum {
        return Some((DataType::Utf8, WireType::Text));
    }
    if let Some(base) = base {
        return map_scalar(base, typmod);
    }
    if let Some(elem) = elem {
        let (dt, wire) = map_scalar(elem, typmod)?;
        return Some((
            DataType::List(Arc::new(Field::new("item", dt, true))),
            WireType::Array(Box::new(wire)),
        ));
    }
    map_scalar(typname, typmod)
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods() {
        // numeric(15,2): typmod = (15 << 16 | 2) + 4
        assert_eq!(
            map_scalar("numeric", (15 << 16 | 2) + 4).unwrap().0,
            DataType::Decimal128(15, 2)
        );
        assert_eq!(
            map_scalar("numeric", -1).unwrap().0,
            DataType::Decimal128(38, 10)
        );
        assert!(map_scalar("numeric", (50 << 16 | 2) + 4).is_none());
        assert!(map_scalar("money", -1).is_none());
    }

    #[test]
    fn wire_names_round_trip() {
        for w in [
            WireType::Numeric,
            WireType::TimestampTz,
            WireType::Array(Box::new(WireType::Int4)),
            WireType::Array(Box::new(WireType::Text)),
        ] {
            assert_eq!(WireType::parse(&w.name()), Some(w));
        }
        assert_eq!(WireType::parse("array:nope"), None);
    }

    #[test]
    fn arrays_domains_enums() {
        let (dt, wire) = map_column("_int4", -1, None, Some("int4"), false).unwrap();
        assert!(matches!(dt, DataType::List(_)));
        assert_eq!(wire, WireType::Array(Box::new(WireType::Int4)));
        let (dt, _) = map_column("mood", -1, None, None, true).unwrap();
        assert_eq!(dt, DataType::Utf8);
        let (dt, _) = map_column("posint", -1, Some("int4"), None, false).unwrap();
        assert_eq!(dt, DataType::Int32);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

//! Decodes PostgreSQL's binary COPY format straight into Arrow builders.
//!
//! `COPY (SELECT ...) TO STDOUT (FORMAT binary)` sends a header, then one
//! tuple per row (`i16` field count, then per field an `i32` length, `-1` for
//! NULL, and the value in the type's binary send format), then an `i16` -1.
//! Values are appended to one Arrow builder per column as they arrive; no row
//! objects are created.

use std::sync::Arc;

use arrow::array::NullBufferBuilder;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder,
    ListArray, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNano, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::types::WireType;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 to PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Largest binary COPY header extension accepted.
const MAX_HEADER_EXTENSION: usize = 64 * 1024;

/// Incremental decoder of one binary COPY stream into record batches.
#[derive(Debug)]
pub struct CopyDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
    header_seen: bool,
    finished: bool,
    /// Bytes of an incomplete tuple carried to the next chunk.
    pending: Vec<u8>,
}

#[derive(Debug)]
struct Column {
    name: String,
    builder: Builder,
}

impl CopyDecoder {
    /// `wire` gives, per field of `schema`, how its values are sent.
    pub fn try_new(schema: SchemaRef, wire: &[WireType]) -> Result<Self, String> {
        if wire.len() != schema.fields().len() {
            return Err(format!(
                "{} wire types for {} columns",
                wire.len(),
                schema.fields().len()
            ));
        }
        let columns = schema
            .fields()
            .iter()
            .zip(wire)
            .map(|(f, w)| {
                Ok(Column {
                    name: f.name().clone(),
                    builder: Builder::try_new(f.data_type(), w)
                        .map_err(|e| format!("column {}: {e}", f.name()))?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            schema,
            columns,
            rows: 0,
            header_seen: false,
            finished: false,
            pending: Vec::new(),
        })
    }

    /// Rows decoded since the last [`CopyDecoder::flush`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Decodes every complete tuple of `chunk` (plus what was carried over).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.pending.is_empty() {
            let used = self.parse(chunk)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            let used = self.parse(&buf)?;
            buf.drain(..used);
            self.pending = buf;
        }
        Ok(())
    }

    /// Checks that the stream ended cleanly.
    pub fn check_complete(&self) -> Result<(), String> {
        if !self.finished || !self.pending.is_empty() {
            return Err("COPY data ended in the middle of a row".to_string());
        }
        Ok(())
    }

    /// Returns the rows decoded so far as one batch.
    pub fn flush(&mut self) -> Result<RecordBatch, String> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| c.builder.finish())
            .collect::<Result<_, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)
            .map_err(|e| e.to_string())
    }

    /// Parses tuples from `data`; returns the bytes consumed.
    fn parse(&mut self, data: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        if !self.header_seen {
            if data.len() < 19 {
                return Ok(0);
            }
            if &data[..11] != SIGNATURE {
                return Err("not a binary COPY stream (bad signature)".to_string());
            }
            let ext = u32::from_be_bytes([data[15], data[16], data[17], data[18]]) as usize;
            // PostgreSQL sends no header extension; a large one is not a
            // COPY stream (and would be buffered whole before failing).
            if ext > MAX_HEADER_EXTENSION {
                return Err(format!(
                    "binary COPY header extension of {ext} bytes (PostgreSQL sends none)"
                ));
            }
            if data.len() < 19 + ext {
                return Ok(0);
            }
            pos = 19 + ext;
            self.header_seen = true;
        }
        while !self.finished && pos + 2 <= data.len() {
            let fields = i16::from_be_bytes([data[pos], data[pos + 1]]);
            if fields == -1 {
                self.finished = true;
                pos += 2;
                break;
            }
            if fields as usize != self.columns.len() {
                return Err(format!(
                    "row has {fields} fields, expected {}",
                    self.columns.len()
                ));
            }
            // Only decode a tuple once all of it is here.
            let mut end = pos + 2;
            let mut complete = true;
            for _ in 0..fields {
                if end + 4 > data.len() {
                    complete = false;
                    break;
                }
                let len = read_i32(&data[end..]);
                end += 4;
                if len > 0 {
                    end += len as usize;
                    if end > data.len() {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                break;
            }
            let mut p = pos + 2;
            for column in &mut self.columns {
                let len = read_i32(&data[p..]);
                p += 4;
                if len < 0 {
                    column.builder.append_null();
                } else {
                    let value = &data[p..p + len as usize];
                    p += len as usize;
                    column
                        .builder
                        .append(value)
                        .map_err(|e| format!("column {}: {e}", column.name))?;
                }
            }
            self.rows += 1;
            pos = end;
        }
        Ok(pos)
    }
}

fn read_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn fixed<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], String> {
    value
        .try_into()
        .map_err(|_| format!("{what} value has {} bytes, expected {N}", value.len()))
}

#[derive(Debug, Clone, Copy)]
enum TextKind {
    Plain,
    TrimEnd,
    Jsonb,
    Uuid,
}

enum Builder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Oid(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder, TextKind),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Interval(IntervalMonthDayNanoBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        inner: Box<Builder>,
    },
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Builder")
    }
}

impl Builder {
    fn try_new(dt: &DataType, wire: &WireType) -> Result<Self, String> {
        Ok(match (wire, dt) {
            (WireType::Bool, DataType::Boolean) => Builder::Bool(BooleanBuilder::new()),
            (WireType::Int2, DataType::Int16) => Builder::Int16(Int16Builder::new()),
            (WireType::Int4, DataType::Int32) => Builder::Int32(Int32Builder::new()),
            (WireType::Int8, DataType::Int64) => Builder::Int64(Int64Builder::new()),
            (WireType::Oid, DataType::Int64) => Builder::Oid(Int64Builder::new()),
            (WireType::Float4, DataType::Float32) => Builder::Float32(Float32Builder::new()),
            (WireType::Float8, DataType::Float64) => Builder::Float64(Float64Builder::new()),
            (WireType::Numeric, DataType::Decimal128(p, s)) => Builder::Decimal(
                Decimal128Builder::new()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
                *p,
                *s,
            ),
            (WireType::Text, DataType::Utf8) => {
                Builder::Text(StringBuilder::new(), TextKind::Plain)
            }
            (WireType::Bpchar, DataType::Utf8) => {
                Builder::Text(StringBuilder::new(), TextKind::TrimEnd)
            }
            (WireType::Jsonb, DataType::Utf8) => {
                Builder::Text(StringBuilder::new(), TextKind::Jsonb)
            }
            (WireType::Uuid, DataType::Utf8) => Builder::Text(StringBuilder::new(), TextKind::Uuid),
            (WireType::Bytea, DataType::Binary) => Builder::Binary(BinaryBuilder::new()),
            (WireType::Date, DataType::Date32) => Builder::Date(Date32Builder::new()),
            (WireType::Time, DataType::Time64(_)) => Builder::Time(Time64MicrosecondBuilder::new()),
            (WireType::Timestamp | WireType::TimestampTz, DataType::Timestamp(_, tz)) => {
                Builder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone()))
            }
            (WireType::Interval, DataType::Interval(_)) => {
                Builder::Interval(IntervalMonthDayNanoBuilder::new())
            }
            (WireType::Array(elem), DataType::List(field)) => Builder::List {
                field: Arc::clone(field),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
                inner: Box::new(Builder::try_new(field.data_type(), elem)?),
            },
            (w, dt) => return Err(format!("cannot read PostgreSQL {} as {dt}", w.name())),
        })
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int16(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) | Builder::Oid(b) => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Decimal(b, _, _) => b.append_null(),
            Builder::Text(b, _) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
            Builder::Interval(b) => b.append_null(),
            Builder::List { offsets, nulls, .. } => {
                let last = *offsets.last().unwrap_or(&0);
                offsets.push(last);
                nulls.append_null();
            }
        }
    }

    fn append(&mut self, v: &[u8]) -> Result<(), String> {
        match self {
            Builder::Bool(b) => b.append_value(fixed::<1>(v, "boolean")?[0] != 0),
            Builder::Int16(b) => b.append_value(i16::from_be_bytes(fixed(v, "smallint")?)),
            Builder::Int32(b) => b.append_value(i32::from_be_bytes(fixed(v, "integer")?)),
            Builder::Int64(b) => b.append_value(i64::from_be_bytes(fixed(v, "bigint")?)),
            Builder::Oid(b) => b.append_value(u32::from_be_bytes(fixed(v, "oid")?) as i64),
            Builder::Float32(b) => b.append_value(f32::from_be_bytes(fixed(v, "real")?)),
            Builder::Float64(b) => b.append_value(f64::from_be_bytes(fixed(v, "double")?)),
            Builder::Decimal(b, p, s) => b.append_value(decode_numeric(v, *p, *s)?),
            Builder::Text(b, kind) => match kind {
                TextKind::Plain => b.append_value(utf8(v)?),
                TextKind::TrimEnd => b.append_value(utf8(v)?.trim_end_matches(' ')),
                TextKind::Jsonb => match v.split_first() {
                    Some((1, rest)) => b.append_value(utf8(rest)?),
                    _ => return Err("unknown jsonb binary version".to_string()),
                },
                TextKind::Uuid => b.append_value(format_uuid(&fixed::<16>(v, "uuid")?)),
            },
            Builder::Binary(b) => b.append_value(v),
            Builder::Date(b) => {
                let days = i32::from_be_bytes(fixed(v, "date")?);
                if days == i32::MAX || days == i32::MIN {
                    return Err("date 'infinity' has no Arrow representation".to_string());
                }
                let days = days
                    .checked_add(PG_EPOCH_DAYS)
                    .ok_or_else(|| format!("date {days} days after 2000-01-01 is out of range"))?;
                b.append_value(days)
            }
            Builder::Time(b) => b.append_value(i64::from_be_bytes(fixed(v, "time")?)),
            Builder::Timestamp(b) => {
                let micros = i64::from_be_bytes(fixed(v, "timestamp")?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err("timestamp 'infinity' has no Arrow representation".to_string());
                }
                let micros = micros.checked_add(PG_EPOCH_MICROS).ok_or_else(|| {
                    format!("timestamp {micros} µs after 2000-01-01 is out of range")
                })?;
                b.append_value(micros)
            }
            Builder::Interval(b) => {
                let raw = fixed::<16>(v, "interval")?;
                let micros = i64::from_be_bytes(raw[0..8].try_into().unwrap_or_default());
                let days = i32::from_be_bytes(raw[8..12].try_into().unwrap_or_default());
                let months = i32::from_be_bytes(raw[12..16].try_into().unwrap_or_default());
                b.append_value(IntervalMonthDayNano::new(
                    months,
                    days,
                    micros.saturating_mul(1000),
                ))
            }
            Builder::List {
                offsets,
                nulls,
                inner,
                ..
            } => {
                let count = decode_array(v, inner)?;
                let last = *offsets.last().unwrap_or(&0);
                offsets.push(last + count as i32);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int16(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) | Builder::Oid(b) => Arc::new(b.finish()),
            Builder::Float32(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Decimal(b, _, _) => Arc::new(b.finish()),
            Builder::Text(b, _) => Arc::new(b.finish()),
            Builder::Binary(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
            Builder::Interval(b) => Arc::new(b.finish()),
            Builder::List {
                field,
                offsets,
                nulls,
                inner,
            } => {
                let values = inner.finish()?;
                let offsets = std::mem::replace(offsets, vec![0]);
                let array = ListArray::try_new(
                    Arc::clone(field),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    values,
                    nulls.finish(),
                )
                .map_err(|e| e.to_string())?;
                Arc::new(array)
            }
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        use arrow::array::ArrayBuilder;
        match self {
            Builder::Int32(b) => b.len(),
            Builder::List { offsets, .. } => offsets.len() - 1,
            _ => 0,
        }
    }
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|_| {
        "text is not valid UTF-8 (is the database encoding UTF8? set it or cast the column)"
            .to_string()
    })
}

fn format_uuid(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 0xf) as usize] as char);
    }
    out
}

/// Decodes a one-dimensional array's elements into `inner`; returns their count.
fn decode_array(v: &[u8], inner: &mut Builder) -> Result<usize, String> {
    if v.len() < 12 {
        return Err("truncated array value".to_string());
    }
    let ndim = read_i32(v);
    if ndim == 0 {
        return Ok(0);
    }
    if ndim != 1 {
        return Err(format!(
            "{ndim}-dimensional arrays are not supported (only one dimension); unnest or cast the column in a view"
        ));
    }
    if v.len() < 20 {
        return Err("truncated array value".to_string());
    }
    let count = read_i32(&v[12..]).max(0) as usize;
    let mut p = 20;
    for _ in 0..count {
        if p + 4 > v.len() {
            return Err("truncated array element".to_string());
        }
        let len = read_i32(&v[p..]);
        p += 4;
        if len < 0 {
            inner.append_null();
        } else {
            let end = p + len as usize;
            if end > v.len() {
                return Err("truncated array element".to_string());
            }
            inner.append(&v[p..end])?;
            p = end;
        }
    }
    Ok(count)
}

/// Decodes a binary `numeric` into an `i128` with `scale` decimal places,
/// rounding half away from zero.
fn decode_numeric(v: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    if v.len() < 8 {
        return Err("truncated numeric value".to_string());
    }
    let ndigits = i16::from_be_bytes([v[0], v[1]]) as i32;
    if ndigits < 0 {
        return Err(format!("malformed numeric value ({ndigits} digit groups)"));
    }
    let weight = i16::from_be_bytes([v[2], v[3]]) as i32;
    let sign = u16::from_be_bytes([v[4], v[5]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric NaN has no decimal representation".to_string()),
        _ => return Err("numeric infinity has no decimal representation".to_string()),
    }
    if v.len() < 8 + 2 * ndigits as usize {
        return Err("truncated numeric value".to_string());
    }
    let scale = scale as i32;
    let overflow = || format!("numeric value does not fit decimal({precision},{scale})");
    let mut acc: i128 = 0;
    let mut first_dropped = 0u16;
    for i in 0..ndigits {
        let at = 8 + 2 * i as usize;
        let group = u16::from_be_bytes([v[at], v[at + 1]]);
        if group > 9999 {
            return Err(format!(
                "malformed numeric value (digit group {group} is not base 10000)"
            ));
        }
        for k in (0..4).rev() {
            let digit = (group / 10u16.pow(k as u32)) % 10;
            // Exponent of this digit in units of 10^-scale.
            let e = 4 * (weight - i) + k + scale;
            if e >= 0 {
                acc = acc
                    .checked_mul(10)
                    .and_then(|a| a.checked_add(digit as i128))
                    .ok_or_else(overflow)?;
            } else if e == -1 {
                first_dropped = digit;
            }
        }
    }
    let last_exp = 4 * (weight - (ndigits - 1)) + scale;
    if ndigits > 0 && last_exp > 0 {
        acc = 10i128
            .checked_pow(last_exp as u32)
            .and_then(|m| acc.checked_mul(m))
            .ok_or_else(overflow)?;
    }
    if first_dropped >= 5 {
        acc = acc.checked_add(1).ok_or_else(overflow)?;
    }
    match 10i128.checked_pow(precision as u32) {
        Some(limit) if acc < limit => {}
        _ => return Err(overflow()),
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Field, Schema};

    fn numeric(weight: i16, negative: bool, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics() {
        assert_eq!(
            decode_numeric(&numeric(0, false, &[1234, 5000]), 15, 2),
            Ok(123450)
        );
        assert_eq!(decode_numeric(&numeric(-1, false, &[500]), 15, 2), Ok(5));
        assert_eq!(
            decode_numeric(&numeric(2, false, &[1]), 15, 2),
            Ok(10_000_000_000)
        );
        assert_eq!(decode_numeric(&numeric(0, true, &[7]), 15, 2), Ok(-700));
        assert_eq!(decode_numeric(&numeric(0, false, &[]), 15, 2), Ok(0));
        // 0.125 at scale 2 rounds half away from zero.
        assert_eq!(decode_numeric(&numeric(-1, false, &[1250]), 10, 2), Ok(13));
        assert_eq!(decode_numeric(&numeric(-1, true, &[1250]), 10, 2), Ok(-13));
        // 1/3 with many digits at scale 10.
        assert_eq!(
            decode_numeric(&numeric(-1, false, &[3333, 3333, 3333, 3333]), 38, 10),
            Ok(3_333_333_333)
        );
        assert!(decode_numeric(&numeric(3, false, &[1]), 5, 2).is_err());
    }

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    #[test]
    fn decodes_rows_across_chunk_boundaries() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                true,
            ),
        ]));
        let wire = [
            WireType::Int4,
            WireType::Text,
            WireType::Array(Box::new(WireType::Int4)),
        ];
        let mut array = Vec::new();
        for x in [1i32, 0, 23] {
            array.extend_from_slice(&x.to_be_bytes());
        }
        array.extend_from_slice(&2i32.to_be_bytes()); // dim size
        array.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        array.extend_from_slice(&4i32.to_be_bytes());
        array.extend_from_slice(&7i32.to_be_bytes());
        array.extend_from_slice(&(-1i32).to_be_bytes());
        let mut stream = SIGNATURE.to_vec();
        stream.extend_from_slice(&0u32.to_be_bytes());
        stream.extend_from_slice(&0u32.to_be_bytes());
        stream.extend(tuple(&[
            Some(&5i32.to_be_bytes()),
            Some(b"ab"),
            Some(&array),
        ]));
        stream.extend(tuple(&[None, None, None]));
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        // Feed in every possible split of the stream into two chunks.
        for cut in 0..stream.len() {
            let mut d = CopyDecoder::try_new(Arc::clone(&schema), &wire).unwrap();
            d.feed(&stream[..cut]).unwrap();
            d.feed(&stream[cut..]).unwrap();
            d.check_complete().unwrap();
            let batch = d.flush().unwrap();
            assert_eq!(batch.num_rows(), 2);
            let ids = batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int32Type>();
            assert_eq!(ids.value(0), 5);
            assert!(ids.is_null(1));
            assert_eq!(batch.column(1).as_string::<i32>().value(0), "ab");
            let tags = batch.column(2).as_list::<i32>();
            assert_eq!(tags.value_length(0), 2);
            assert!(tags.is_null(1));
            let inner = tags.value(0);
            let inner = inner.as_primitive::<arrow::datatypes::Int32Type>();
            assert_eq!(inner.value(0), 7);
            assert!(inner.is_null(1));
        }
    }

    #[test]
    fn uuid_and_errors() {
        let b: [u8; 16] = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7,
        ];
        assert_eq!(format_uuid(&b), "12345678-9abc-def0-0001-020304050607");
        let mut b = Builder::try_new(&DataType::Int32, &WireType::Int4).unwrap();
        assert!(b.append(&[0, 1]).is_err());
        assert_eq!(b.len(), 0);
        assert!(Builder::try_new(&DataType::Utf8, &WireType::Int4).is_err());
    }

    /// Values a server (or a corrupted stream) can send that overflowed the
    /// arithmetic: each is an error naming the problem, never a panic or a
    /// wrapped value.
    #[test]
    fn values_near_the_limits_are_errors_not_overflows() {
        use arrow::datatypes::TimeUnit;
        let mut ts = Builder::try_new(
            &DataType::Timestamp(TimeUnit::Microsecond, None),
            &WireType::Timestamp,
        )
        .unwrap();
        let e = ts.append(&(i64::MAX - 1).to_be_bytes()).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        ts.append(&0i64.to_be_bytes()).unwrap();
        let mut date = Builder::try_new(&DataType::Date32, &WireType::Date).unwrap();
        let e = date.append(&(i32::MAX - 1).to_be_bytes()).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let Builder::Timestamp(ts) = &mut ts else {
            unreachable!()
        };
        assert_eq!(ts.finish().values().to_vec(), [PG_EPOCH_MICROS]);
        // Malformed numerics: negative digit count, a group beyond base
        // 10000, a weight too large for any decimal, precision 38.
        let mut negative = numeric(0, false, &[1]);
        negative[0..2].copy_from_slice(&(-3i16).to_be_bytes());
        assert!(decode_numeric(&negative, 10, 2)
            .unwrap_err()
            .contains("malformed"));
        assert!(decode_numeric(&numeric(0, false, &[10000]), 10, 2)
            .unwrap_err()
            .contains("base 10000"));
        assert!(decode_numeric(&numeric(i16::MAX, false, &[1]), 38, 0).is_err());
        assert_eq!(
            decode_numeric(&numeric(8, false, &[9999; 9]), 38, 0).map(|v| v > 0),
            Ok(true)
        );
        assert!(decode_numeric(&numeric(9, false, &[9999; 10]), 38, 0).is_err());
    }

    #[test]
    fn a_huge_header_extension_is_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]));
        let mut d = CopyDecoder::try_new(schema, &[WireType::Int4]).unwrap();
        let mut stream = SIGNATURE.to_vec();
        stream.extend_from_slice(&0u32.to_be_bytes());
        stream.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = d.feed(&stream).unwrap_err();
        assert!(e.contains("header extension"), "{e}");
    }
}

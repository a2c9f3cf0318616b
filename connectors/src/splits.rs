//! Cutting one remote table read into N independent reads.
//!
//! **Column ranges** (`split_column`, `lower_bound`, `upper_bound`, `splits`
//! in the catalog file, or a source's own choice such as MySQL's integer
//! primary key): equal-width ranges of an integer, numeric, float or date
//! column; the first split also takes values below `lower_bound` and NULLs,
//! the last those above `upper_bound` (as Spark's JDBC partitioning), so every
//! row is read exactly once whatever the bounds.

use arrow::datatypes::DataType;

/// Number of splits for a table of `bytes`: one per `split_size`, at most `max`.
pub fn split_count(bytes: u64, split_size: u64, max: usize) -> usize {
    let wanted = bytes.div_ceil(split_size.max(1)).max(1);
    (wanted as usize).clamp(1, max.max(1))
}

/// `n` range predicates over `column` (already quoted for the source) between
/// `lower` and `upper`; `date_literal` renders a `YYYY-MM-DD` date.
pub fn column_splits(
    column: &str,
    data_type: &DataType,
    lower: &str,
    upper: &str,
    n: usize,
    date_literal: fn(&str) -> String,
) -> Result<Vec<String>, String> {
    let n = n.max(1);
    let bounds: Vec<String> = match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Decimal128(..) => {
            let lo = parse_int(lower)?;
            let hi = parse_int(upper)?;
            if hi <= lo {
                return Err(format!("upper_bound {hi} must be above lower_bound {lo}"));
            }
            let stride = ((hi - lo) / n as i128).max(1);
            (1..n as i128)
                .map(|i| lo + i * stride)
                .take_while(|b| *b < hi)
                .map(|b| b.to_string())
                .collect()
        }
        DataType::Float32 | DataType::Float64 => {
            let lo: f64 = lower
                .parse()
                .map_err(|_| format!("lower_bound \"{lower}\" is not a number"))?;
            let hi: f64 = upper
                .parse()
                .map_err(|_| format!("upper_bound \"{upper}\" is not a number"))?;
            if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
                return Err(format!("upper_bound {hi} must be above lower_bound {lo}"));
            }
            let stride = (hi - lo) / n as f64;
            (1..n)
                .map(|i| format!("{:?}", lo + i as f64 * stride))
                .collect()
        }
        DataType::Date32 => {
            let lo = parse_date(lower)?;
            let hi = parse_date(upper)?;
            if hi <= lo {
                return Err(format!(
                    "upper_bound {upper} must be after lower_bound {lower}"
                ));
            }
            let stride = ((hi - lo) / n as i64).max(1);
            (1..n as i64)
                .map(|i| lo + i * stride)
                .take_while(|d| *d < hi)
                .map(|d| date_literal(&format_date(d)))
                .collect()
        }
        other => {
            return Err(format!(
                "split_column has type {other}; use an integer, numeric, float or date column"
            ))
        }
    };
    let c = column;
    if bounds.is_empty() {
        return Ok(vec![]);
    }
    let mut preds = Vec::with_capacity(bounds.len() + 1);
    preds.push(format!("{c} < {} OR {c} IS NULL", bounds[0]));
    for w in bounds.windows(2) {
        preds.push(format!("{c} >= {} AND {c} < {}", w[0], w[1]));
    }
    preds.push(format!("{c} >= {}", bounds[bounds.len() - 1]));
    Ok(preds)
}

fn parse_int(s: &str) -> Result<i128, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("bound \"{s}\" is not an integer"))
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
fn parse_date(s: &str) -> Result<i64, String> {
    let err = || format!("bound \"{s}\" is not a date (YYYY-MM-DD)");
    let mut parts = s.trim().splitn(3, '-');
    let y: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
    let m: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
    let d: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(err());
    }
    // Days from civil (proleptic Gregorian), after H. Hinnant.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok(era * 146_097 + doe - 719_468)
}

fn format_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

/// The queries of a scan: `base` (a `SELECT ... FROM ...`) with the pushed
/// `conditions`, one query per split predicate (or one query if there are
/// none), and the pushed `limit`.
pub fn split_queries(
    base: &str,
    conditions: &[String],
    splits: &[String],
    limit: Option<usize>,
) -> Vec<String> {
    let query_for = |split: Option<&String>| {
        let mut all: Vec<String> = conditions.to_vec();
        if let Some(s) = split {
            all.push(format!("({s})"));
        }
        let mut q = base.to_string();
        if !all.is_empty() {
            q.push_str(" WHERE ");
            q.push_str(&all.join(" AND "));
        }
        if let Some(n) = limit {
            q.push_str(&format!(" LIMIT {n}"));
        }
        q
    };
    if splits.is_empty() {
        vec![query_for(None)]
    } else {
        splits.iter().map(|s| query_for(Some(s))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(split_count(10, 100, 8), 1);
        assert_eq!(split_count(1000, 100, 8), 8);
        assert_eq!(split_count(250, 100, 8), 3);
        assert_eq!(split_count(0, 100, 8), 1);
    }

    #[test]
    fn column_ranges() {
        let p = column_splits("\"id\"", &DataType::Int64, "0", "100", 4, pg_date).unwrap();
        assert_eq!(p[0], r#""id" < 25 OR "id" IS NULL"#);
        assert_eq!(p[1], r#""id" >= 25 AND "id" < 50"#);
        assert_eq!(p[3], r#""id" >= 75"#);
        let p = column_splits(
            "d",
            &DataType::Date32,
            "1992-01-01",
            "1998-12-31",
            2,
            pg_date,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert!(p[0].contains("'1995-07-02'::date"), "{p:?}");
        assert!(column_splits("d", &DataType::Utf8, "a", "z", 2, pg_date).is_err());
        assert!(column_splits("id", &DataType::Int32, "5", "1", 2, pg_date).is_err());
        assert_eq!(format_date(parse_date("2000-02-29").unwrap()), "2000-02-29");
        assert_eq!(parse_date("1970-01-01"), Ok(0));
    }

    fn pg_date(d: &str) -> String {
        format!("'{d}'::date")
    }
}

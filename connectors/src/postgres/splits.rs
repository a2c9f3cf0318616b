//! How one PostgreSQL table becomes N independent reads.
//!
//! - **ctid page ranges** (default for tables and materialized views larger
//!   than the catalog's `split_size`): split `i` reads heap pages
//!   `[start_i, start_i+1)` with `ctid >= '(start,0)' AND ctid < '(end,0)'`,
//!   which PostgreSQL 14+ runs as a TID range scan. The last split is open
//!   ended, so pages added after the size estimate are still read.
//! - **column ranges** (`split_column`, `lower_bound`, `upper_bound`,
//!   `splits`): see [`crate::splits::column_splits`].
//!
//! All splits of one scan read under one exported snapshot, so together they
//! return exactly the rows of a single read even while other sessions write.

/// `n` ctid range predicates over a table of `pages` heap pages.
pub fn ctid_splits(pages: u64, n: usize) -> Vec<String> {
    let ctid = "ctid";
    let n = (n as u64).clamp(1, pages.max(1));
    if n == 1 {
        return vec![];
    }
    let per = pages.div_ceil(n);
    let bounds: Vec<u64> = (1..n).map(|i| i * per).collect();
    let tid = |page: u64| format!("'({page},0)'::tid");
    let mut preds = Vec::with_capacity(n as usize);
    preds.push(format!("{ctid} < {}", tid(bounds[0])));
    for w in bounds.windows(2) {
        preds.push(format!(
            "{ctid} >= {} AND {ctid} < {}",
            tid(w[0]),
            tid(w[1])
        ));
    }
    preds.push(format!("{ctid} >= {}", tid(bounds[bounds.len() - 1])));
    preds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctid_ranges_cover_every_page() {
        assert!(ctid_splits(10, 1).is_empty());
        let p = ctid_splits(10, 3);
        assert_eq!(
            p,
            vec![
                "ctid < '(4,0)'::tid",
                "ctid >= '(4,0)'::tid AND ctid < '(8,0)'::tid",
                "ctid >= '(8,0)'::tid",
            ]
        );
        // More splits than pages: one per page.
        assert_eq!(ctid_splits(2, 8).len(), 2);
    }
}

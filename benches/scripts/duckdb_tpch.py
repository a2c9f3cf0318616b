#!/usr/bin/env python3
"""DuckDB as a peer in `weft-bench tpch --duckdb`: the TPC-H queries over
the same Parquet files (one directory per table), best of N per query.

Prints one line per query: `qN <best ms> <rows of the last statement>`.
Needs the `duckdb` Python package (`pip install duckdb`).
"""
import argparse
import os
import time

import duckdb


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--queries-dir", required=True)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--queries", required=True, help="e.g. 1,2,3")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    a = p.parse_args()
    con = duckdb.connect()
    con.execute(f"SET threads = {a.threads}")
    for table in sorted(os.listdir(a.data)):
        path = os.path.join(a.data, table)
        if os.path.isdir(path):
            con.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}/*.parquet')"
            )
    for q in [int(x) for x in a.queries.split(",") if x]:
        with open(os.path.join(a.queries_dir, f"q{q}.sql")) as f:
            text = "\n".join(l for l in f.read().splitlines() if not l.startswith("--"))
        statements = [s.strip() for s in text.split(";") if s.strip()]
        best, rows = None, 0
        for _ in range(max(a.iterations, 1)):
            start = time.perf_counter()
            for s in statements:
                result = con.execute(s).fetchall()
                if s.split(None, 1)[0].lower() in ("select", "with"):
                    rows = len(result)
            elapsed = (time.perf_counter() - start) * 1e3
            best = elapsed if best is None else min(best, elapsed)
        print(f"q{q} {best:.1f} {rows}", flush=True)


if __name__ == "__main__":
    main()

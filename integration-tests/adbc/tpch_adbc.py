"""Runs the 22 TPC-H queries through ADBC's Flight SQL driver against a Weft
coordinator and prints one line per query: `qN ROWS` or `qN ERROR message`.

ADBC checks that every stream's schema equals the schema announced in
FlightInfo, so this also checks Weft announces exactly what it streams.
Then, for every table named after QUERY_DIR (`catalog.schema.table`),
compares the schema `adbc_get_table_schema` announces (GetTables with
schemas) with the schema of a result read from the table, and prints
`schema TABLE ok` or `schema TABLE MISMATCH ...` (SQLAlchemy maps columns
from the former).
Usage: python3 tpch_adbc.py grpc://HOST:PORT QUERY_DIR [CATALOG.SCHEMA.TABLE ...]
"""
import sys
import warnings

import adbc_driver_flightsql.dbapi as flightsql

warnings.simplefilter("ignore")
url, query_dir = sys.argv[1], sys.argv[2]
with flightsql.connect(url, db_kwargs={"username": "weft", "password": "weft"}) as conn:
    for q in range(1, 23):
        text = open(f"{query_dir}/q{q}.sql").read()
        statements = [s for s in text.split(";") if s.strip()]
        rows = 0
        try:
            with conn.cursor() as cur:
                for s in statements:
                    cur.execute(s)
                    table = cur.fetch_arrow_table()
                    if table.num_columns > 0:
                        rows = table.num_rows
            print(f"q{q} {rows}", flush=True)
        except Exception as e:  # report and go on with the next query
            print(f"q{q} ERROR {e}".replace("\n", " "), flush=True)
    for name in sys.argv[3:]:
        catalog, schema, table = name.split(".")
        announced = conn.adbc_get_table_schema(table, catalog_filter=catalog, db_schema_filter=schema)
        with conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {catalog}.{schema}.{table} LIMIT 1")
            streamed = cur.fetch_arrow_table().schema
        diffs = [f"{a.name}: announced {a.type}, streamed {b.type}"
                 for a, b in zip(announced, streamed) if a.type != b.type or a.name != b.name]
        if len(announced) != len(streamed):
            diffs.append(f"{len(announced)} columns announced, {len(streamed)} streamed")
        print(f"schema {name} " + ("ok" if not diffs else "MISMATCH " + "; ".join(diffs)), flush=True)

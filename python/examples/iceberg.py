"""Iceberg sinks: a stream of orders lands in an Iceberg table of a SQLite SQL catalog, one
snapshot per epoch, and per-customer totals are kept up to date in a second table by upserts;
pyiceberg (if installed) reads both back. Runs in a temporary directory."""

import tempfile
import time
from pathlib import Path

import laminardb


def wait_for(f, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not f():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.05)


with tempfile.TemporaryDirectory() as work:
    catalog = f"sqlite:///{work}/catalog.db"
    with laminardb.open(str(Path(work) / "db")) as db:
        db.execute("CREATE SOURCE orders (order_id BIGINT, customer VARCHAR, amount DOUBLE)")
        db.execute(f"""
            CREATE SINK warehouse AS SELECT * FROM orders WHERE amount > 0
            WITH (connector = 'iceberg', 'catalog_uri' = '{catalog}', 'table' = 'analytics.orders')""")
        db.execute(f"""
            CREATE SINK totals AS
            SELECT customer, SUM(amount) AS spent, COUNT(*) AS orders FROM orders GROUP BY customer
            WITH (connector = 'iceberg', 'catalog_uri' = '{catalog}', 'table' = 'analytics.customer_totals',
                  'write_mode' = 'upsert')""")
        db.start()
        for batch in range(3):
            db.insert("orders", [{"order_id": batch * 10 + i, "customer": f"c{i}", "amount": i * 2.5}
                                 for i in range(10)])
            db.flush()
        wait_for(lambda: db.sink_metrics("warehouse").rows_written >= 27)
        wait_for(lambda: db.sink_metrics("totals").details.get("iceberg_commits", 0) >= 3)
        print("snapshots committed:", db.sink_metrics("warehouse").details["iceberg_commits"])
        print("totals rows replaced by upserts:", db.sink_metrics("totals").details["iceberg_retired_rows"])

    try:
        from pyiceberg.catalog.sql import SqlCatalog
    except ImportError:
        print("pyiceberg is not installed; skipping the read-back")
    else:
        table = SqlCatalog("default", uri=catalog).load_table("analytics.orders")
        rows = table.scan().to_arrow()
        print(f"{rows.num_rows} rows in {len(table.snapshots())} snapshots")
        print(rows.sort_by("order_id").slice(0, 5).to_pylist())
        totals = SqlCatalog("default", uri=catalog).load_table("analytics.customer_totals").scan().to_arrow()
        print("customer totals:", totals.sort_by("customer").to_pylist()[:3])
        assert totals.num_rows == 10, "one row per customer"

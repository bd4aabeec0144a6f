"""An Iceberg sink: a stream of orders lands in an Iceberg table of a SQLite SQL catalog, one
snapshot per epoch, and pyiceberg (if installed) reads the table back. Runs in a temporary
directory."""

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
        db.start()
        for batch in range(3):
            db.insert("orders", [{"order_id": batch * 10 + i, "customer": f"c{i}", "amount": i * 2.5}
                                 for i in range(10)])
            db.flush()
        wait_for(lambda: db.sink_metrics("warehouse").rows_written >= 27)
        print("snapshots committed:", db.sink_metrics("warehouse").details["iceberg_commits"])

    try:
        from pyiceberg.catalog.sql import SqlCatalog
    except ImportError:
        print("pyiceberg is not installed; skipping the read-back")
    else:
        table = SqlCatalog("default", uri=catalog).load_table("analytics.orders")
        rows = table.scan().to_arrow()
        print(f"{rows.num_rows} rows in {len(table.snapshots())} snapshots")
        print(rows.sort_by("order_id").slice(0, 5).to_pylist())

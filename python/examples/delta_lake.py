"""A Delta Lake round trip: a streaming aggregate is MERGEd into one Delta table while a second
pipeline tails that table as a source. Runs in a temporary directory."""

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
    table = Path(work) / "revenue"
    with laminardb.open(str(Path(work) / "writer")) as db:
        db.execute("CREATE SOURCE sales (store_id BIGINT, revenue DOUBLE)")
        db.execute(f"""
            CREATE SINK revenue AS
            SELECT store_id, SUM(revenue) AS total, COUNT(*) AS n FROM sales GROUP BY store_id
            WITH (connector = 'delta-lake', 'table_uri' = '{table}', 'write_mode' = 'upsert')""")
        db.start()
        db.insert("sales", [{"store_id": s, "revenue": 10.0 * s} for s in (1, 2, 2, 3)])
        db.flush()
        wait_for(lambda: db.sink_metrics("revenue").rows_written >= 3)
        db.insert("sales", [{"store_id": 1, "revenue": 5.0}])  # store 1's row is updated by MERGE
        db.flush()
        wait_for(lambda: db.sink_metrics("revenue").rows_written >= 4)

    with laminardb.open(str(Path(work) / "reader")) as db:
        db.execute(f"""
            CREATE SOURCE revenue (store_id BIGINT PRIMARY KEY, total DOUBLE, n BIGINT)
            WITH (connector = 'delta-lake', 'table_uri' = '{table}', 'poll_interval_ms' = '100')""")
        db.start()
        wait_for(lambda: len(db.query("SELECT * FROM revenue").to_dicts()) == 3)
        for row in sorted(db.query("SELECT * FROM revenue").to_dicts(), key=lambda r: r["store_id"]):
            print(row)

"""Python code as a source and a sink: a generator feeds readings, SQL keeps per-sensor
statistics, and a callback receives every change of the result (with an ``op`` column)."""

import random
import time

import pyarrow as pa

import laminardb

SCHEMA = pa.schema([("sensor", pa.utf8()), ("celsius", pa.float64()), ("ts", pa.timestamp("ms"))])


@laminardb.source(schema=SCHEMA, watermark="ts")
def readings():
    """Yields one dict per reading, then a whole batch at once."""
    rng = random.Random(7)
    t0 = 1_700_000_000_000
    for i in range(1000):
        yield {"sensor": f"s{i % 4}", "celsius": round(rng.gauss(21, 3), 2), "ts": t0 + i * 100}
    yield pa.record_batch(
        [pa.array(["s0", "s1"]), pa.array([99.0, -5.0]), pa.array([t0 + 100_000, t0 + 100_100], pa.timestamp("ms"))],
        schema=SCHEMA,
    )


alerts = []


@laminardb.sink(name="alerts")
def on_alert(batch: pa.RecordBatch) -> None:
    """Called in epoch order with the changed rows of the alerting query."""
    alerts.extend(r for r in batch.to_pylist() if r["op"] == "insert")


with laminardb.open(":memory:") as db:
    db.register_source("readings", readings)
    db.execute("""
        CREATE MATERIALIZED VIEW stats AS
        SELECT sensor, COUNT(*) AS n, ROUND(AVG(celsius), 2) AS avg_c, MAX(celsius) AS max_c
        FROM readings GROUP BY sensor
    """)
    db.execute("""
        CREATE SINK hot AS SELECT sensor, MAX(celsius) AS max_c FROM readings GROUP BY sensor HAVING MAX(celsius) > 50
        WITH (connector = 'python', 'name' = 'alerts')
    """)
    db.start()
    while db.source_metrics("readings").connector_state != "finished":
        time.sleep(0.01)
    db.flush()
    print(db.query("SELECT * FROM stats ORDER BY sensor").to_pandas())
    print("alerts:", alerts)
    print(db.source_metrics("readings"))
    db.shutdown()

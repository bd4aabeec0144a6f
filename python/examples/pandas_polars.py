"""Feeding DataFrames in and reading results out as pandas, polars and Arrow."""

import pandas as pd
import polars as pl

import laminardb

db = laminardb.open(":memory:")
db.execute("CREATE SOURCE readings (sensor VARCHAR, temp DOUBLE, ts TIMESTAMP, WATERMARK FOR ts)")
db.execute("CREATE STREAM hot AS SELECT sensor, temp FROM readings WHERE temp > 30")
db.execute("CREATE STREAM per_sensor AS SELECT sensor, AVG(temp) AS avg_temp, COUNT(*) AS n FROM readings GROUP BY sensor")
db.start()

db.insert("readings", pd.DataFrame({
    "sensor": ["a", "b", "a"],
    "temp": [21.5, 35.0, 31.0],
    "ts": pd.to_datetime(["2024-06-01 10:00", "2024-06-01 10:01", "2024-06-01 10:02"]),
}))
db.insert("readings", pl.DataFrame({"sensor": ["b"], "temp": [29.0]}))
db.flush()

print(db.query("SELECT * FROM hot ORDER BY temp").to_polars())
print(db.query("SELECT * FROM per_sensor ORDER BY sensor").to_pandas())
print("watermark (ms):", db.pipeline_watermark)
db.close()

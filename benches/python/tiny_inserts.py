"""Per-insert overhead: N single-row inserts of a dict into a source feeding a stream.

Usage: python tiny_inserts.py N   -> prints "inserts_per_s seconds"
"""

import sys
import time

import laminardb

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
db = laminardb.open(":memory:")
db.execute("CREATE SOURCE ev (id BIGINT, name VARCHAR, v DOUBLE)")
db.execute("CREATE STREAM s AS SELECT name, COUNT(*) AS n FROM ev GROUP BY name")
db.start()
rows = [{"id": i, "name": f"k{i % 10}", "v": float(i)} for i in range(N)]
t = time.perf_counter()
for r in rows:
    db.insert("ev", r)
db.flush()
dt = time.perf_counter() - t
total = db.query("SELECT SUM(n) AS n FROM s").to_dicts()[0]["n"]
assert total == N, total
print(f"{N / dt:.0f} {dt:.3f}")
db.close()

"""Insert → subscriber latency of whichever ``laminardb`` package the interpreter imports.

Usage: ``python latency.py LABEL [--rate ROWS_PER_S] [--batch ROWS] [--seconds S]``. The same
measurement as ``benches/engine.rs``'s ``latency``: a source ``ev(id BIGINT, v DOUBLE)``, the
stream ``SELECT id, v * 2 AS v2 FROM ev WHERE v >= 0``, a producer thread inserting one batch of
``--batch`` rows (all carrying the batch number as ``id``) every ``batch / rate`` seconds for
``--seconds``, and the main thread reading ``subscribe_stream``. A batch's latency runs from just
before its ``insert`` call until the subscriber holds all of its rows. Prints one JSON line:
``{"engine", "rate", "batches", "p50_ms", "p99_ms", "max_ms", "error"}``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from typing import Any

import pyarrow as pa


def measure(rate: int, batch: int, seconds: float) -> dict[str, Any]:
    import laminardb as lm

    db = lm.open(":memory:")
    db.execute("CREATE SOURCE ev (id BIGINT, v DOUBLE)")
    db.execute("CREATE STREAM s AS SELECT id, v * 2 AS v2 FROM ev WHERE v >= 0")
    db.start()
    sub = db.subscribe_stream("s")
    batches = int(rate * seconds) // batch
    period = batch / rate
    v = pa.array([float(i) for i in range(batch)], pa.float64())
    data = [pa.record_batch([pa.array([b] * batch, pa.int64()), v], names=["id", "v"]) for b in range(batches)]
    sent: list[float] = [0.0] * batches

    def produce() -> None:
        start = time.perf_counter()
        for b in range(batches):
            wait = start + b * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent[b] = time.perf_counter()
            db.insert("ev", data[b])

    producer = threading.Thread(target=produce)
    producer.start()
    seen: Counter[int] = Counter()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds + 30
    while len(latencies) < batches and time.perf_counter() < deadline:
        try:
            r = sub.next_timeout(1000)
        except lm.SubscriptionError:
            continue
        if r is None:
            continue
        now = time.perf_counter()
        for batch_id, count in Counter(r.to_arrow().column("id").to_pylist()).items():
            seen[batch_id] += count
            if seen[batch_id] == batch:
                latencies.append((now - sent[batch_id]) * 1000)
    producer.join()
    db.shutdown()
    out: dict[str, Any] = {"rate": rate, "batches": len(latencies), "error": None}
    if len(latencies) < batches:
        out["error"] = f"only {len(latencies)} of {batches} batches arrived complete"
    if latencies:
        latencies.sort()
        pick = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))]  # noqa: E731
        out.update(p50_ms=round(pick(0.5), 3), p99_ms=round(pick(0.99), 3), max_ms=round(latencies[-1], 3))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("label")
    p.add_argument("--rate", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    print(json.dumps({"engine": a.label, **measure(a.rate, a.batch, a.seconds)}), flush=True)


if __name__ == "__main__":
    main()

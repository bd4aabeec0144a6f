"""Rows/s appended to a local Delta table in 10k-row epochs: this package's `delta-lake` sink
(one Delta commit per epoch) next to `deltalake.write_deltalake` called once per 10k-row batch
(one commit each) on the same data, in one run.

    python benches/python/delta_append.py [rows] [runs]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

import laminardb

BATCH = 10_000


def data(n: int) -> list[pa.RecordBatch]:
    out = []
    for start in range(0, n, BATCH):
        ids = pa.array(range(start, min(start + BATCH, n)), pa.int64())
        out.append(pa.record_batch({
            "id": ids,
            "account": pc.cast(pc.bit_wise_and(ids, 1023), pa.int64()),
            "amount": pc.multiply(pc.cast(ids, pa.float64()), 0.01),
            "tag": pa.array([f"t{i % 97}" for i in range(ids.offset, ids.offset + len(ids))]),
        }))
    return out


def laminar(batches: list[pa.RecordBatch], n: int, work: Path) -> float:
    table = work / "laminar"
    with laminardb.open(str(work / "db")) as db:
        db.execute("CREATE SOURCE tx (id BIGINT, account BIGINT, amount DOUBLE, tag VARCHAR)")
        db.execute(f"CREATE SINK out AS SELECT * FROM tx WITH (connector = 'delta-lake', 'table_uri' = '{table}')")
        db.start()
        t0 = time.perf_counter()
        for b in batches:
            db.insert("tx", b)
            db.flush()  # one epoch per 10k rows
        while db.sink_metrics("out").rows_written < n:
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
    assert len(DeltaTable(str(table)).to_pyarrow_table()) == n
    return elapsed


def delta_rs(batches: list[pa.RecordBatch], n: int, work: Path) -> float:
    table = str(work / "deltalake")
    t0 = time.perf_counter()
    for b in batches:
        write_deltalake(table, pa.Table.from_batches([b]), mode="append")
    elapsed = time.perf_counter() - t0
    assert len(DeltaTable(table).to_pyarrow_table()) == n
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    batches = data(n)
    times: dict[str, list[float]] = {"laminardb delta-lake sink": [], "deltalake.write_deltalake": []}
    for _ in range(runs):
        for name, f in (("laminardb delta-lake sink", laminar), ("deltalake.write_deltalake", delta_rs)):
            work = Path(tempfile.mkdtemp(prefix="delta-bench-"))
            try:
                times[name].append(f(batches, n, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print(f"{n} rows in {len(batches)} epochs of {BATCH} rows, median of {runs}")
    rates = {k: n / statistics.median(v) for k, v in times.items()}
    for k, r in rates.items():
        print(f"  {k:28s} {r / 1e3:10.1f}k rows/s")
    a, b = rates["laminardb delta-lake sink"], rates["deltalake.write_deltalake"]
    print(f"  ratio: {a / b:.2f}x")


if __name__ == "__main__":
    main()

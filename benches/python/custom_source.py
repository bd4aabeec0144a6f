"""Rows/s through a Python source into an aggregate (COUNT and SUM over every row), one engine per
run: ``python custom_source.py ENGINE MODE N``.

ENGINE: ``laminardb`` (``@laminardb.source`` generator), ``pathway`` (``pw.io.python`` with a
``ConnectorSubject``) or ``bytewax`` (a ``DynamicSource``). MODE: ``batches`` (the data comes in
chunks of 10,000 rows: pyarrow RecordBatches for laminardb, lists of rows for the others, which
take rows one at a time) or ``dicts`` (one dict per row). The data is built before the clock
starts; the clock stops when the engine has counted every row. Prints ``ENGINE MODE rows/s``.
"""

import sys
import time

CHUNK = 10_000


def batches(n):
    import pyarrow as pa

    out = []
    for start in range(0, n, CHUNK):
        v = pa.array(range(start, min(n, start + CHUNK)), pa.int64())
        out.append(pa.record_batch([v], names=["v"]))
    return out


def run_laminardb(mode, n):
    import pyarrow as pa

    import laminardb

    schema = pa.schema([("v", pa.int64())])
    data = batches(n) if mode == "batches" else [{"v": i} for i in range(n)]

    @laminardb.source(schema=schema)
    def feed():
        yield from data

    with laminardb.open(":memory:") as db:
        db.register_source("feed", feed, options={"retention": "0 rows"})
        db.execute("CREATE MATERIALIZED VIEW agg AS SELECT COUNT(*) AS n, SUM(v) AS s FROM feed")
        t = time.perf_counter()
        db.start()
        while db.source_metrics("feed").connector_state != "finished":
            time.sleep(0.0005)
        db.flush()
        dt = time.perf_counter() - t
        (row,) = db.query("SELECT n, s FROM agg").to_dicts()
        assert row == {"n": n, "s": n * (n - 1) // 2}, row
        db.shutdown()
    return dt


def run_pathway(mode, n):
    import pathway as pw

    rows = [b.column(0).to_pylist() for b in batches(n)] if mode == "batches" else list(range(n))

    class Subject(pw.io.python.ConnectorSubject):
        def run(self):
            if mode == "batches":
                for chunk in rows:
                    for v in chunk:
                        self.next(v=v)
            else:
                for v in rows:
                    self.next(v=v)

    class S(pw.Schema):
        v: int

    table = pw.io.python.read(Subject(), schema=S, autocommit_duration_ms=10)
    agg = table.reduce(n=pw.reducers.count(), s=pw.reducers.sum(pw.this.v))
    final = {}
    pw.io.subscribe(agg, on_change=lambda key, row, time, is_addition: is_addition and final.update(row))
    t = time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    dt = time.perf_counter() - t
    assert final.get("n") == n and final.get("s") == n * (n - 1) // 2, final
    return dt


def run_bytewax(mode, n):
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    chunks = [b.column(0).to_pylist() for b in batches(n)] if mode == "batches" else [[v] for v in range(n)]

    class Part(StatelessSourcePartition):
        def __init__(self):
            self.it = iter(chunks)

        def next_batch(self):
            try:
                return next(self.it)
            except StopIteration:
                raise StopIteration() from None

    class Src(DynamicSource):
        def build(self, step_id, worker_index, worker_count):
            return Part()

    final = {}

    class Out(StatelessSinkPartition):
        def write_batch(self, items):
            for _key, (count, total) in items:
                final["n"], final["s"] = count, total

    class Sink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            return Out()

    flow = Dataflow("bench")
    s = op.input("in", flow, Src())
    keyed = op.key_on("key", s, lambda _v: "all")
    agg = op.reduce_final("sum", op.map("pair", keyed, lambda kv: (kv[0], (1, kv[1]))), lambda a, b: (a[0] + b[0], a[1] + b[1]))
    op.output("out", agg, Sink())
    t = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t
    assert final == {"n": n, "s": n * (n - 1) // 2}, final
    return dt


if __name__ == "__main__":
    engine, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dt = {"laminardb": run_laminardb, "pathway": run_pathway, "bytewax": run_bytewax}[engine](mode, n)
    print(f"{engine} {mode} {n / dt:.0f}")

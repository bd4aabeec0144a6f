"""Suite adapter for this package (``import laminardb`` in the ``ours`` virtualenv, release build).

One in-memory database per run: a source per input (``PRIMARY KEY`` for upsert inputs, a
``WATERMARK`` on the event-time column), ``CREATE STREAM result AS <workloads.SQL[...]>`` (after the
streams of ``workloads.HELPER_STREAMS`` it reads), then
every batch through ``insert``. ``flush()`` runs at each barrier and after the last batch; the
clock stops when that last flush returns (everything inserted is processed and the stream's
queryable state is final), and ``SELECT * FROM result`` is the result. Timely workers come from
``LaminarConfig(workers=...)``.
"""

from __future__ import annotations

import time

import pyarrow as pa

from workloads import HELPER_STREAMS, SQL, Inputs

_SQL_TYPES = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR"}


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    return _SQL_TYPES[t]


def source_ddl(inputs: Inputs, name: str) -> str:
    """``CREATE SOURCE`` for one input, with its watermark and primary key where it has them."""
    parts = [f"{f.name} {_sql_type(f.type)}" for f in inputs.schemas[name]]
    if name in inputs.event_time:
        col = inputs.event_time[name]
        parts.append(f"WATERMARK FOR {col} AS {col} - INTERVAL '{inputs.watermark_delay_ms // 1000}' SECOND")
    if name in inputs.primary_keys:
        parts.append(f"PRIMARY KEY ({', '.join(inputs.primary_keys[name])})")
    return f"CREATE SOURCE {name} ({', '.join(parts)})"


def run(inputs: Inputs, workers: int = 1) -> tuple[float, pa.Table]:
    import laminardb

    db = laminardb.open(":memory:", config=laminardb.LaminarConfig(workers=workers))
    try:
        for name in inputs.schemas:
            db.execute(source_ddl(inputs, name))
        for stream, query in HELPER_STREAMS.get(inputs.workload, []):
            db.execute(f"CREATE STREAM {stream} AS {query}")
        db.execute(f"CREATE STREAM result AS {SQL[inputs.workload]}")
        db.start()
        barriers = set(inputs.barriers)
        t = time.perf_counter()
        for i, (name, batch) in enumerate(inputs.steps):
            db.insert(name, batch)
            if i in barriers:
                db.flush()
        db.flush()
        seconds = time.perf_counter() - t
        result = db.query("SELECT * FROM result").to_arrow()
    finally:
        db.shutdown()
    return seconds, result

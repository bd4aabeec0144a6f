"""Suite adapter for DuckDB, the batch reference.

DuckDB sees each input whole, as one Arrow table per input, and runs the workload's query
(``workloads.DUCK_SQL``) once. The clock covers registering the Arrow tables and the query,
which scans them in place (no copy into DuckDB's own storage beforehand), until the result is
an Arrow table. The final state of upsert inputs (last row per key) is computed before the
clock starts, so DuckDB is not charged for it, and so is the conversion of event-time columns
to microseconds (DuckDB's TIMESTAMP). DuckDB uses its default number of threads
(every core); ``workers`` is ignored.
"""

from __future__ import annotations

import time

import pyarrow as pa

import workloads
from workloads import Inputs


def run(inputs: Inputs, workers: int = 1) -> tuple[float, pa.Table]:
    import duckdb

    tables = {name: workloads.duck_timestamps(t) for name, t in workloads.final_state(inputs).items()}
    con = duckdb.connect()
    t = time.perf_counter()
    result = workloads.duck_query(inputs.workload, tables, con)
    seconds = time.perf_counter() - t
    con.close()
    return seconds, result

"""The suite's workloads: deterministic inputs, the continuous queries and their reference answers.

Every engine adapter (``engine_<name>.py``) receives an :class:`Inputs` from :func:`build` and
returns the final result table; :func:`check` compares it with :func:`reference`, which DuckDB
computes over the final state of the same inputs. Importing this module needs only pyarrow and
duckdb (installed in every engine's virtualenv).

Workloads (``WORKLOADS``; the Kafka pipeline is run separately by ``run.sh --kafka``):

- ``w1``: ``shared/bench/groupby_w1.py``'s rows (symbol of 100 values, price, ts) in 10k-row
  batches, ``GROUP BY symbol`` with COUNT/AVG/MAX.
- ``filter_project``: trades(id, sym, price, qty) in 10k-row batches, ``WHERE price > 100`` with
  two computed columns; append-only output, the result is every output row.
- ``groupby_1m``: (k, v) rows over 1,000,000 distinct keys (fewer when N is smaller), COUNT/SUM
  per key.
- ``join``: ``benches/python/join_window.py``'s rounds of customers/orders upserts (PRIMARY KEY
  sources, a barrier after each round), the ``joined`` stream's final state.
- ``window``: ``join_window.py``'s 1-minute tumbling window over 100 keys, watermark 1 minute.
- ``q0`` … ``q8``: Nexmark queries over the three tables of this package's ``nexmark`` datagen
  flavour, generated once per size by ``python workloads.py nexmark EVENTS`` (in a virtualenv
  with this package) and cached as Arrow IPC files; N counts Nexmark events.

Usage as a script: ``python workloads.py nexmark EVENTS`` generates and caches the Nexmark
tables; ``python workloads.py show WORKLOAD N`` prints the inputs' shape and the reference size.
"""

from __future__ import annotations

import bisect
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
import join_window  # noqa: E402  (benches/python/join_window.py: the join and window inputs)

WORKLOADS: list[str] = [
    "w1",
    "filter_project",
    "groupby_1m",
    "join",
    "window",
    "q0",
    "q1",
    "q2",
    "q3",
    "q4",
    "q5",
    "q7",
    "q8",
]

# N per workload at scale 1: a run of this package takes roughly 0.5–5 s at these sizes. One
# Nexmark data set serves every query: 5M events keep the stateful queries (q4, q5) and the
# Python engines within minutes, so the stateless ones (q0–q2) run for well under a second.
DEFAULT_N: dict[str, int] = {
    "w1": 5_000_000,
    "filter_project": 5_000_000,
    "groupby_1m": 5_000_000,
    "join": 1_000_000,
    "window": 10_000_000,
    **{q: 5_000_000 for q in ("q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8")},
}

BATCH = 10_000
GROUPBY_KEYS = 1_000_000
NEXMARK_SEED = 1
NEXMARK_T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: event e of the generator happens at T0 + e ms
DATA_DIR = Path(os.environ.get("LAMINAR_BENCH_DATA", Path.home() / ".cache" / "laminardb" / "bench-data"))


class Unsupported(Exception):
    """Raised by an adapter when its engine cannot express a workload; the message says why."""


@dataclass
class Inputs:
    """One workload's input streams, in arrival order, and what the driver needs to feed them."""

    workload: str
    # (input name, batch) in arrival order; every input is an append-only stream except those
    # named in `primary_keys`.
    steps: list[tuple[str, pa.RecordBatch]]
    # input name -> schema (event times as pa.timestamp("ms"))
    schemas: dict[str, pa.Schema]
    # upsert inputs: a later row with the same key replaces the earlier one
    primary_keys: dict[str, list[str]]
    # input name -> event-time column, for the inputs that carry a watermark
    event_time: dict[str, str]
    # indices into `steps` after which the driver waits until the engine processed everything so far
    barriers: list[int]
    # the row count rows/s is computed from
    rows: int
    # watermark delay of the inputs in `event_time` (the watermark trails the newest event time by this)
    watermark_delay_ms: int = 60_000
    # input name -> the rows of that input, in order (the concatenation of its steps)
    tables: dict[str, pa.Table] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Continuous queries, as this package runs them (standard SQL; output column names fixed).

_NEXMARK_WINDOW = "INTERVAL '10' SECOND"

SQL: dict[str, str] = {  # q5, q7, q8 read the streams of HELPER_STREAMS (below)
    "w1": "SELECT symbol, COUNT(*) AS n, AVG(price) AS p, MAX(price) AS m FROM trades GROUP BY symbol",
    "filter_project": (
        "SELECT id, sym, price * qty AS notional, price * 1.1 AS marked FROM trades WHERE price > 100"
    ),
    "groupby_1m": "SELECT k, COUNT(*) AS n, SUM(v) AS s FROM t GROUP BY k",
    "join": "SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON o.k = c.k",
    "window": (
        "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s "
        "FROM ev GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)"
    ),
    # q0: passthrough.
    "q0": "SELECT auction, bidder, price, channel, url, date_time, extra FROM bid",
    # q1: currency conversion.
    "q1": "SELECT auction, bidder, price * 0.908 AS price, date_time, extra FROM bid",
    # q2: selection.
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    # q3: local item suggestion (incremental join of two append-only streams).
    "q3": (
        "SELECT p.name, p.city, p.state, a.id FROM auction a JOIN person p ON a.seller = p.id "
        "WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA')"
    ),
    # q4: average closing price per category: the highest bid of each auction among the bids
    # within [auction.date_time, auction.expires], averaged per category.
    "q4": (
        "SELECT category, AVG(final) AS avg_final FROM ("
        "SELECT a.id, a.category, MAX(b.price) AS final FROM auction a JOIN bid b ON a.id = b.auction "
        "WHERE b.date_time >= a.date_time AND b.date_time <= a.expires GROUP BY a.id, a.category"
        ") q GROUP BY category"
    ),
    # q5: hot items: per 10-second window sliding by 2 seconds, the auctions with the most bids.
    "q5": (
        "SELECT c.window_start, c.window_end, c.auction, c.num FROM q5_counts c JOIN ("
        "SELECT window_start, window_end, MAX(num) AS maxn FROM q5_counts GROUP BY window_start, window_end) m "
        "ON c.window_start = m.window_start AND c.window_end = m.window_end AND c.num >= m.maxn"
    ),
    # q7: highest bid per 10-second tumbling window, joined back to the bids that carry it
    # (window membership half-open: window_start <= date_time < window_end).
    "q7": (
        "SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b JOIN q7_max w ON b.price = w.maxprice "
        "WHERE b.date_time >= w.window_start AND b.date_time < w.window_end"
    ),
    # q8: persons who created an auction in the 10-second tumbling window they registered in.
    "q8": (
        "SELECT p.id, p.name, p.window_start FROM q8_persons p JOIN q8_sellers a "
        "ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end"
    ),
}

# The windowed aggregates q5, q7 and q8 read, as streams of their own. This package takes one
# windowed GROUP BY (TUMBLE/HOP) per query, at the top level or in a subquery or CTE; q8 has two,
# and q5 and q7 are kept in the same form, as their windowed parts run as streams the query joins
# (each stream reading a stream shares its dataflow).
HELPER_STREAMS: dict[str, list[tuple[str, str]]] = {
    "q5": [
        (
            "q5_counts",
            "SELECT auction, window_start, window_end, COUNT(*) AS num FROM bid "
            "GROUP BY auction, HOP(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)",
        )
    ],
    "q7": [
        (
            "q7_max",
            "SELECT window_start, window_end, MAX(price) AS maxprice FROM bid "
            f"GROUP BY TUMBLE(date_time, {_NEXMARK_WINDOW})",
        )
    ],
    "q8": [
        (
            "q8_persons",
            f"SELECT id, name, window_start, window_end FROM person GROUP BY id, name, TUMBLE(date_time, {_NEXMARK_WINDOW})",
        ),
        (
            "q8_sellers",
            f"SELECT seller, window_start, window_end FROM auction GROUP BY seller, TUMBLE(date_time, {_NEXMARK_WINDOW})",
        ),
    ],
}

# The same queries in DuckDB's dialect, over the final state of the inputs (reference and the
# DuckDB engine). Windows are computed from epoch milliseconds, aligned to the Unix epoch.
_DUCK_TUMBLE10 = "epoch_ms(epoch_ms(date_time) // 10000 * 10000)"
_DUCK_HOP = (  # (bid row, window start) for the 5 windows of 10 s sliding by 2 s that hold the bid
    "SELECT b.auction, epoch_ms(epoch_ms(b.date_time) // 2000 * 2000 - 2000 * s) AS window_start "
    "FROM bid b, range(5) r(s)"
)
DUCK_SQL: dict[str, str] = {  # SQL's text where DuckDB takes it as is; q5, q7, q8 as CTEs
    **SQL,
    "filter_project": (
        "SELECT id, sym, price * qty AS notional, price * 1.1::DOUBLE AS marked FROM trades WHERE price > 100"
    ),
    "window": (
        "SELECT k, epoch_ms(epoch_ms(ts) // 60000 * 60000) AS window_start, "
        "epoch_ms(epoch_ms(ts) // 60000 * 60000 + 60000) AS window_end, COUNT(*) AS n, SUM(v) AS s "
        "FROM ev GROUP BY ALL"
    ),
    "q1": "SELECT auction, bidder, price * 0.908::DOUBLE AS price, date_time, extra FROM bid",
    "q5": (
        f"WITH h AS ({_DUCK_HOP}), "
        "c AS (SELECT auction, window_start, window_start + INTERVAL 10 SECOND AS window_end, COUNT(*) AS num "
        "FROM h GROUP BY ALL), "
        "m AS (SELECT window_start, MAX(num) AS maxn FROM c GROUP BY window_start) "
        "SELECT c.window_start, c.window_end, c.auction, c.num FROM c JOIN m "
        "ON c.window_start = m.window_start AND c.num >= m.maxn"
    ),
    "q7": (
        f"WITH w AS (SELECT {_DUCK_TUMBLE10} AS window_start, MAX(price) AS maxprice FROM bid GROUP BY 1) "
        "SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b JOIN w "
        f"ON {_DUCK_TUMBLE10.replace('date_time', 'b.date_time')} = w.window_start AND b.price = w.maxprice"
    ),
    "q8": (
        f"WITH p AS (SELECT DISTINCT id, name, {_DUCK_TUMBLE10} AS window_start FROM person), "
        f"a AS (SELECT DISTINCT seller, {_DUCK_TUMBLE10} AS window_start FROM auction) "
        "SELECT p.id, p.name, p.window_start FROM p JOIN a ON p.id = a.seller AND p.window_start = a.window_start"
    ),
}


# --------------------------------------------------------------------------------------------
# Inputs.


def arrow_of(relation: Any) -> pa.Table:
    """A DuckDB relation's rows as a pyarrow Table (whichever spelling the installed duckdb has)."""
    to_table = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return to_table()


def _duck_batches(sql: str, schema: pa.Schema, batch: int = BATCH) -> list[pa.RecordBatch]:
    """Rows generated by a DuckDB query, cast to `schema`, in batches of `batch` rows."""
    import duckdb

    table = arrow_of(duckdb.sql(sql)).cast(schema)
    return table.combine_chunks().to_batches(max_chunksize=batch)


def _appends(
    workload: str,
    name: str,
    schema: pa.Schema,
    batches: list[pa.RecordBatch],
    event_time: dict[str, str] | None = None,
    watermark_delay_ms: int = 60_000,
) -> Inputs:
    """Inputs of one append-only stream fed batch by batch."""
    return Inputs(
        workload=workload,
        steps=[(name, b) for b in batches],
        schemas={name: schema},
        primary_keys={},
        event_time=event_time or {},
        barriers=[],
        rows=sum(b.num_rows for b in batches),
        watermark_delay_ms=watermark_delay_ms,
    )


def _build_w1(n: int) -> Inputs:
    # groupby_w1.py: row i = batch b, offset j: symbol S{j % 100}, price (i % 997), ts i.
    schema = pa.schema([("symbol", pa.string()), ("price", pa.float64()), ("ts", pa.int64())])
    rows = n // BATCH * BATCH
    sql = f"SELECT 'S' || (i % {BATCH} % 100) AS symbol, (i % 997)::DOUBLE AS price, i AS ts FROM range({rows}) r(i)"
    return _appends("w1", "trades", schema, _duck_batches(sql, schema))


def _build_filter_project(n: int) -> Inputs:
    schema = pa.schema([("id", pa.int64()), ("sym", pa.string()), ("price", pa.float64()), ("qty", pa.int64())])
    sql = (
        "SELECT i AS id, 'S' || (i % 100) AS sym, (i * 7 % 200)::DOUBLE + 0.5 AS price, i % 10 + 1 AS qty "
        f"FROM range({n}) r(i)"
    )
    return _appends("filter_project", "trades", schema, _duck_batches(sql, schema))


def _build_groupby_1m(n: int) -> Inputs:
    # Row i has key (i * 7919) mod 1,000,000: all keys when N >= 1M, each key every 1M rows.
    schema = pa.schema([("k", pa.int64()), ("v", pa.float64())])
    sql = f"SELECT i * 7919 % {GROUPBY_KEYS} AS k, (i % 1000)::DOUBLE AS v FROM range({n}) r(i)"
    return _appends("groupby_1m", "t", schema, _duck_batches(sql, schema))


def _build_join(n: int) -> Inputs:
    rounds, _sent, rows, _expect = join_window.build_join(n)
    steps: list[tuple[str, pa.RecordBatch]] = []
    barriers: list[int] = []
    for customers, orders in rounds:
        steps.append(("customers", customers))
        steps.append(("orders", orders))
        barriers.append(len(steps) - 1)
    return Inputs(
        workload="join",
        steps=steps,
        schemas={"customers": rounds[0][0].schema, "orders": rounds[0][1].schema},
        primary_keys={"customers": ["k"], "orders": ["id"]},
        event_time={},
        barriers=barriers,
        rows=rows,
    )


def _build_window(n: int) -> Inputs:
    batches, _expect = join_window.build_window(n)
    return _appends(
        "window", "ev", batches[0].schema, batches, event_time={"ev": "ts"}, watermark_delay_ms=60_000
    )


# Nexmark -------------------------------------------------------------------------------------

NEXMARK_TABLES = ("person", "auction", "bid")
NEXMARK_INPUTS: dict[str, tuple[str, ...]] = {
    "q0": ("bid",),
    "q1": ("bid",),
    "q2": ("bid",),
    "q3": ("person", "auction"),
    "q4": ("auction", "bid"),
    "q5": ("bid",),
    "q7": ("bid",),
    "q8": ("person", "auction"),
}
# Nexmark event e is a person, an auction or a bid by e % 50: 0 | 1..3 | 4..49.
_NEXMARK_FIRST_EVENT = {"person": 0, "auction": 1, "bid": 4}


def nexmark_dir(events: int) -> Path:
    return DATA_DIR / f"nexmark-seed{NEXMARK_SEED}-{events}"


def nexmark_counts(events: int) -> dict[str, int]:
    """Rows of each table among the first `events` Nexmark events."""
    full, rest = divmod(events, 50)
    return {
        "person": full + min(rest, 1),
        "auction": 3 * full + max(0, min(rest, 4) - 1),
        "bid": 46 * full + max(0, rest - 4),
    }


def generate_nexmark(events: int) -> Path:
    """Generates the three Nexmark tables with this package's datagen connector and caches them.

    Each table is read back from a ``SELECT *`` stream over its datagen source. The generator
    starts each source's event time at the wall clock of its own start; the cached files rebase
    every table to one origin (event e at ``NEXMARK_T0_MS + e`` ms, ``expires`` shifted alike), so
    the data are identical on every generation and the tables share one clock.
    """
    import laminardb

    out = nexmark_dir(events)
    counts = nexmark_counts(events)
    db = laminardb.open(":memory:")
    for t in NEXMARK_TABLES:
        cols = ", ".join(f"{f.name} {_sql_type(f.type)}" for f in _NEXMARK_SCHEMAS[t])
        db.execute(
            f"CREATE SOURCE {t}_gen ({cols}) WITH (connector = 'datagen', 'flavour' = 'nexmark', "
            f"'nexmark.table' = '{t}', 'rows_per_second' = '0', 'max_rows' = '{events}', 'seed' = '{NEXMARK_SEED}')"
        )
        db.execute(f"CREATE STREAM {t}_all AS SELECT * FROM {t}_gen")
    db.start()
    deadline = time.monotonic() + 600
    for t in NEXMARK_TABLES:
        while True:
            got = db.query(f"SELECT COUNT(*) AS n FROM {t}_all").to_arrow().column("n")[0].as_py()
            if got == counts[t]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nexmark {t}: {got} rows generated, expected {counts[t]}")
            time.sleep(0.05)
    tables = {t: db.query(f"SELECT * FROM {t}_all").to_arrow() for t in NEXMARK_TABLES}
    db.shutdown()
    out.mkdir(parents=True, exist_ok=True)
    for t, table in tables.items():
        table = _rebase_nexmark(t, table.cast(_NEXMARK_SCHEMAS[t]))
        tmp = out / f"{t}.arrow.tmp"
        with pa.OSFile(str(tmp), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
        tmp.rename(out / f"{t}.arrow")
    return out


def _rebase_nexmark(table_name: str, table: pa.Table) -> pa.Table:
    """Moves a generated table's event times to the common origin, ordered by event time."""
    import duckdb

    first = _NEXMARK_FIRST_EVENT[table_name]
    ts_cols = ["date_time"] + (["expires"] if table_name == "auction" else [])
    shift = (
        f"(SELECT {NEXMARK_T0_MS + first} - epoch_ms(MIN(date_time)) FROM t)"  # one value for the table
    )
    select = ", ".join(
        f"epoch_ms(epoch_ms({f.name}) + {shift}) AS {f.name}" if f.name in ts_cols else f.name
        for f in table.schema
    )
    con = duckdb.connect()
    con.register("t", duck_timestamps(table))
    return arrow_of(con.sql(f"SELECT {select} FROM t ORDER BY date_time")).cast(table.schema)


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    return "VARCHAR"


_TS = pa.timestamp("ms")
_NEXMARK_SCHEMAS: dict[str, pa.Schema] = {
    "person": pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("email_address", pa.string()),
            ("credit_card", pa.string()),
            ("city", pa.string()),
            ("state", pa.string()),
            ("date_time", _TS),
            ("extra", pa.string()),
        ]
    ),
    "auction": pa.schema(
        [
            ("id", pa.int64()),
            ("item_name", pa.string()),
            ("description", pa.string()),
            ("initial_bid", pa.int64()),
            ("reserve", pa.int64()),
            ("date_time", _TS),
            ("expires", _TS),
            ("seller", pa.int64()),
            ("category", pa.int64()),
            ("extra", pa.string()),
        ]
    ),
    "bid": pa.schema(
        [
            ("auction", pa.int64()),
            ("bidder", pa.int64()),
            ("price", pa.int64()),
            ("channel", pa.string()),
            ("url", pa.string()),
            ("date_time", _TS),
            ("extra", pa.string()),
        ]
    ),
}


def load_nexmark(events: int) -> dict[str, pa.Table]:
    """The cached Nexmark tables of `events` events (generated by ``workloads.py nexmark``)."""
    d = nexmark_dir(events)
    missing = [t for t in NEXMARK_TABLES if not (d / f"{t}.arrow").exists()]
    if missing:
        raise FileNotFoundError(
            f"{d}: no cached Nexmark data; run `python {__file__} nexmark {events}` where this package is installed"
        )
    out = {}
    for t in NEXMARK_TABLES:
        with pa.memory_map(str(d / f"{t}.arrow")) as f:
            out[t] = pa.ipc.open_file(f).read_all().combine_chunks()
    return out


def _build_nexmark(workload: str, events: int) -> Inputs:
    tables = load_nexmark(events)
    used = NEXMARK_INPUTS[workload]
    # Steps of BATCH events: per segment of event time, each used table's rows of that segment.
    cuts = {t: _segment_offsets(tables[t], events) for t in used}
    steps: list[tuple[str, pa.RecordBatch]] = []
    for s in range(len(next(iter(cuts.values()))) - 1):
        for t in used:
            lo, hi = cuts[t][s], cuts[t][s + 1]
            if hi > lo:
                steps.append((t, tables[t].slice(lo, hi - lo).to_batches()[0]))
    return Inputs(
        workload=workload,
        steps=steps,
        schemas={t: _NEXMARK_SCHEMAS[t] for t in used},
        primary_keys={},
        event_time={t: "date_time" for t in used},
        barriers=[],
        rows=sum(tables[t].num_rows for t in used),
        watermark_delay_ms=60_000,
    )


def _segment_offsets(table: pa.Table, events: int) -> list[int]:
    """Row offsets of `table` (ordered by date_time) at event-time boundaries every BATCH events."""
    ms = table.column("date_time").cast(pa.int64()).to_pylist()
    bounds = [NEXMARK_T0_MS + e for e in range(0, events, BATCH)] + [NEXMARK_T0_MS + events]
    return [bisect.bisect_left(ms, b) for b in bounds]


_BUILDERS: dict[str, Callable[[int], Inputs]] = {
    "w1": _build_w1,
    "filter_project": _build_filter_project,
    "groupby_1m": _build_groupby_1m,
    "join": _build_join,
    "window": _build_window,
}


def build(workload: str, n: int) -> Inputs:
    """The inputs of `workload` at size `n` (rows, or Nexmark events); deterministic."""
    if workload in _BUILDERS:
        inputs = _BUILDERS[workload](n)
    elif workload in NEXMARK_INPUTS:
        inputs = _build_nexmark(workload, n)
    else:
        raise ValueError(f"unknown workload {workload!r} (one of {', '.join(WORKLOADS)})")
    inputs.tables = _final_tables(inputs)
    return inputs


def _final_tables(inputs: Inputs) -> dict[str, pa.Table]:
    per: dict[str, list[pa.RecordBatch]] = {name: [] for name in inputs.schemas}
    for name, batch in inputs.steps:
        per[name].append(batch)
    return {name: pa.Table.from_batches(bs, schema=inputs.schemas[name]) for name, bs in per.items()}


# --------------------------------------------------------------------------------------------
# Reference answers and the comparison.


def sequence(n: int) -> pa.Array:
    """1, 2, …, n as int64, computed by Arrow."""
    return pc.cumulative_sum(pa.nulls(n, pa.int64()).fill_null(1))


def final_state(inputs: Inputs) -> dict[str, pa.Table]:
    """Each input's final state: all rows of append-only inputs, the last row per key of upsert ones."""
    import duckdb

    out = {}
    for name, table in inputs.tables.items():
        keys = inputs.primary_keys.get(name)
        if not keys:
            out[name] = table
            continue
        con = duckdb.connect()
        con.register("seq", table.append_column("_seq", sequence(table.num_rows)))
        cols = ", ".join(f.name for f in table.schema)
        out[name] = arrow_of(con.sql(
            f"SELECT {cols} FROM seq QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)} ORDER BY _seq DESC) = 1"
        )).cast(table.schema)
    return out


def duck_query(workload: str, tables: dict[str, pa.Table], con: Any = None) -> pa.Table:
    """Runs the workload's DuckDB query over `tables` (input name -> Arrow table)."""
    import duckdb

    con = con or duckdb.connect()
    for name, table in tables.items():
        con.register(name, duck_timestamps(table))
    return arrow_of(con.sql(DUCK_SQL[workload]))


def duck_timestamps(table: pa.Table) -> pa.Table:
    """`table` with timestamp columns in microseconds, DuckDB's own TIMESTAMP."""
    schema = pa.schema(
        [pa.field(f.name, pa.timestamp("us")) if pa.types.is_timestamp(f.type) else f for f in table.schema]
    )
    return table if schema == table.schema else table.cast(schema)


def reference(inputs: Inputs) -> pa.Table:
    """The final answer, computed with DuckDB over the final state of the inputs."""
    return duck_query(inputs.workload, final_state(inputs))


def round_join_reference(inputs: Inputs) -> pa.Table:
    """The join workload under append-only inputs joined one round at a time (no state across rounds).

    This is what an engine without upsert sources and with a join that keeps no state computes
    (laminardb 0.17.0): every order row of round r meets the customer rows of round r only.
    """
    rounds = []
    for i in inputs.barriers:
        (_, customers), (_, orders) = inputs.steps[i - 1], inputs.steps[i]
        tables = {"orders": pa.Table.from_batches([orders]), "customers": pa.Table.from_batches([customers])}
        rounds.append(duck_query("join", tables))
    return pa.concat_tables(rounds)


def normalize(table: pa.Table) -> pa.Table:
    """Canonical column types: integers int64, floats/decimals float64, strings utf8, timestamps int64 ms."""
    cols = []
    for col in table.columns:
        t = col.type
        if pa.types.is_dictionary(t):
            col = col.cast(t.value_type)
            t = col.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            col = col.cast(pa.timestamp(t.unit if pa.types.is_timestamp(t) else "ms")).cast(pa.timestamp("ms")).cast(pa.int64())
        elif pa.types.is_integer(t):
            col = col.cast(pa.int64())
        elif pa.types.is_floating(t) or pa.types.is_decimal(t):
            col = col.cast(pa.float64())
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            col = col.cast(pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def compare(want: pa.Table, got: pa.Table, rel_tol: float = 1e-9) -> str | None:
    """None if `got` equals `want` as a multiset of rows (floats within `rel_tol`), else what differs."""
    if set(got.column_names) != set(want.column_names):
        return f"columns {got.column_names}, expected {want.column_names}"
    if got.num_rows != want.num_rows:
        return f"{got.num_rows} rows, expected {want.num_rows}"
    got = normalize(got.select(want.column_names))
    want = normalize(want)
    floats = [f.name for f in want.schema if pa.types.is_floating(f.type)]
    order = [(c, "ascending") for c in want.column_names if c not in floats] + [(c, "ascending") for c in floats]
    want = want.sort_by(order)
    got = got.sort_by(order)
    for name in want.column_names:
        a, b = want.column(name).combine_chunks(), got.column(name).combine_chunks()
        if a.null_count or b.null_count:
            if not pc.all(pc.equal(pc.is_null(a), pc.is_null(b))).as_py():
                return f"column {name}: NULLs differ"
            a, b = a.fill_null(0) if name in floats else a, b.fill_null(0) if name in floats else b
        if name in floats:
            diff = pc.abs(pc.subtract(a, b))
            tol = pc.multiply(pc.max_element_wise(pc.abs(a), pc.abs(b)), rel_tol)
            ok = pc.or_(pc.less_equal(diff, tol), pc.equal(a, b))
        else:
            ok = pc.equal(a, b)
        ok = ok.fill_null(True) if a.null_count else ok
        if not pc.all(ok).as_py():
            i = pc.index(ok, False).as_py()
            return f"column {name}, row {i} of the sorted result: {b[i].as_py()!r}, expected {a[i].as_py()!r}"
    return None


def check(inputs: Inputs, got: pa.Table) -> str | None:
    """None if `got` equals the reference answer as a multiset, else a short description of the difference."""
    return compare(reference(inputs), got)


def _main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "nexmark":
        events = int(argv[1])
        d = nexmark_dir(events)
        if not all((d / f"{t}.arrow").exists() for t in NEXMARK_TABLES):
            generate_nexmark(events)
        print(d)
    elif len(argv) == 3 and argv[0] == "show":
        workload, n = argv[1], int(argv[2])
        inputs = build(workload, n)
        ref = reference(inputs)
        print(
            f"{workload}: {len(inputs.steps)} steps, {inputs.rows} rows, inputs "
            f"{ {k: v.num_rows for k, v in inputs.tables.items()} }, reference {ref.num_rows} rows"
        )
    else:
        sys.exit(__doc__.split("\n\n")[-1])


if __name__ == "__main__":
    _main(sys.argv[1:])

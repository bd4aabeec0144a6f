"""LaminarDB: an embeddable streaming SQL database.

Declare sources and continuous queries in SQL; results stay up to date as data arrives and can be
subscribed to or queried ad hoc, as pyarrow, pandas, polars or plain Python objects.

>>> import laminardb
>>> db = laminardb.open(":memory:")
>>> _ = db.execute("CREATE SOURCE t (k VARCHAR, v BIGINT)")
>>> _ = db.execute("CREATE STREAM s AS SELECT k, SUM(v) AS total FROM t GROUP BY k")
>>> db.start()
>>> db.insert("t", [{"k": "a", "v": 1}, {"k": "a", "v": 2}])
2
>>> db.flush()
>>> db.query("SELECT * FROM s").to_dicts()
[{'k': 'a', 'total': 3}]
>>> db.close()
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Sequence

import pyarrow as pa

from . import codes
from . import _laminardb as _ext
from .types import (
    ChangeEvent,
    ChangeRow,
    CheckpointResult,
    CheckpointStatus,
    Column,
    MaterializedView,
    Metrics,
    QueryInfo,
    Schema,
    TableStats,
    Watermark,
)
from ._laminardb import (
    CheckpointError,
    ConnectionError,
    ConnectorError,
    IngestionError,
    LaminarError,
    QueryError,
    SchemaError,
    StreamError,
    SubscriptionError,
)

__version__: str = _ext.__version__

__all__ = [
    "open", "connect", "Connection", "LaminarConfig", "Config", "QueryResult", "ExecuteResult",
    "StreamSubscription", "AsyncStreamSubscription", "CallbackSubscription", "Writer",
    "SourceInfo", "SinkInfo", "StreamInfo", "PipelineMetrics", "SourceMetrics", "SinkMetrics", "StreamMetrics",
    "PipelineNode", "PipelineEdge", "PipelineTopology", "codes", "__version__",
    "execute", "sql", "mv", "BatchWriter", "Subscription", "AsyncSubscription", "ChangeEvent", "ChangeRow",
    "CheckpointResult", "CheckpointStatus", "Column", "MaterializedView", "Metrics", "QueryInfo", "Schema", "TableStats", "Watermark",
    "LaminarError", "ConnectionError", "QueryError", "IngestionError", "SchemaError",
    "SubscriptionError", "StreamError", "CheckpointError", "ConnectorError",
    "source", "sink",
]


def _error(cls: type, code: int, message: str) -> LaminarError:
    err = cls(message)
    err.code = code
    return err


class LaminarConfig:
    """Engine settings (read-only once built)."""

    __slots__ = ("_buffer_size", "_storage_dir", "_checkpoint_interval_ms", "_workers", "_processes", "_process_index")

    def __init__(
        self,
        *,
        buffer_size: int = 65536,
        storage_dir: Optional[str] = None,
        checkpoint_interval_ms: Optional[int] = None,
        workers: Optional[int] = None,
        processes: Optional[Sequence[str]] = None,
        process_index: Optional[int] = None,
    ) -> None:
        if buffer_size <= 0:
            raise ValueError("buffer_size must be positive")
        if workers is not None and workers <= 0:
            raise ValueError("workers must be positive")
        if (processes is None) != (process_index is None):
            raise ValueError("processes and process_index go together")
        if processes is not None:
            processes = [str(p) for p in processes]
            if len(processes) < 2:
                raise ValueError("a cluster needs at least 2 process addresses")
            if not 0 <= int(process_index) < len(processes):  # type: ignore[arg-type]
                raise ValueError(f"process_index must be in 0..{len(processes) - 1}")
        self._buffer_size = int(buffer_size)
        self._storage_dir = None if storage_dir is None else str(storage_dir)
        self._checkpoint_interval_ms = checkpoint_interval_ms
        self._workers = workers
        self._processes: Optional[list[str]] = processes
        self._process_index = None if process_index is None else int(process_index)

    @property
    def buffer_size(self) -> int:
        """Rows a source may have in flight before inserts wait."""
        return self._buffer_size

    @property
    def storage_dir(self) -> Optional[str]:
        """Where checkpoints are stored."""
        return self._storage_dir

    @property
    def checkpoint_interval_ms(self) -> Optional[int]:
        """Checkpoint interval, or None."""
        return self._checkpoint_interval_ms

    @property
    def workers(self) -> Optional[int]:
        """Worker threads (default: number of cores; per process in a cluster)."""
        return self._workers

    @property
    def processes(self) -> Optional[list[str]]:
        """`host:port` of every process of a cluster running this pipeline, or None."""
        return None if self._processes is None else list(self._processes)

    @property
    def process_index(self) -> Optional[int]:
        """This process's index in `processes` (0 sees the whole result), or None."""
        return self._process_index

    def __repr__(self) -> str:
        cluster = ""
        if self._processes is not None:
            cluster = f", processes={self._processes!r}, process_index={self._process_index}"
        return (
            f"LaminarConfig(buffer_size={self._buffer_size}, storage_dir={self._storage_dir!r}, "
            f"checkpoint_interval_ms={self._checkpoint_interval_ms}, workers={self._workers}{cluster})"
        )


Config = LaminarConfig


class QueryResult:
    """Rows returned by a query or delivered by a subscription."""

    def __init__(self, table: pa.Table, epoch: Optional[int] = None) -> None:
        self._table = table
        self._cursor = 0
        self.epoch = epoch

    @classmethod
    def _from_batch(cls, batch: pa.RecordBatch, epoch: Optional[int] = None) -> "QueryResult":
        return cls(pa.Table.from_batches([batch]), epoch)

    @property
    def schema(self) -> pa.Schema:
        """The schema."""
        return self._table.schema

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return self._table.num_rows

    @property
    def num_columns(self) -> int:
        """Number of columns."""
        return self._table.num_columns

    @property
    def columns(self) -> list[str]:
        """Column names."""
        return list(self._table.column_names)

    def to_arrow(self) -> pa.Table:
        """As a pyarrow Table (zero-copy)."""
        return self._table

    arrow = to_arrow

    def to_pandas(self) -> Any:
        """As a pandas DataFrame."""
        return self._table.to_pandas()

    df = to_pandas
    to_df = to_pandas

    @property
    def num_batches(self) -> int:
        """Number of record batches."""
        return len(self._table.to_batches())

    def to_polars(self, *, lazy: bool = False) -> Any:
        """As a polars DataFrame (a LazyFrame with `lazy=True`)."""
        import polars as pl

        df = pl.from_arrow(self._table)
        return df.lazy() if lazy else df

    pl = to_polars

    def to_dicts(self) -> list[dict[str, Any]]:
        """As a list of row dicts."""
        return self._table.to_pylist()

    def fetchall(self) -> list[tuple]:
        """Every remaining row as a tuple."""
        rows = self._rows()[self._cursor :]
        self._cursor = self.num_rows
        return rows

    def fetchone(self) -> Optional[tuple]:
        """The next row, or None."""
        rows = self.fetchmany(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int = 1) -> list[tuple]:
        """Up to `size` next rows."""
        rows = self._rows()[self._cursor : self._cursor + size]
        self._cursor += len(rows)
        return rows

    def _rows(self) -> list[tuple]:
        cols = [c.to_pylist() for c in self._table.columns]
        return list(zip(*cols)) if cols else []

    def show(self, max_rows: int = 20) -> None:
        """Prints the rows as a table."""
        print(self._table.slice(0, max_rows).to_pandas().to_string(index=False))

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._rows())

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._table.__arrow_c_stream__(requested_schema)

    def _repr_html_(self) -> str:
        return self._table.slice(0, 50).to_pandas().to_html(index=False)

    def __repr__(self) -> str:
        return f"QueryResult(num_rows={self.num_rows}, columns={self.columns})"


class ExecuteResult:
    """The outcome of `Connection.execute`."""

    def __init__(self, raw: tuple) -> None:
        self.result_type: str = raw[0]
        self.ddl_type: Optional[str] = raw[1]
        self.ddl_object: Optional[str] = raw[2]
        self.rows_affected: int = raw[3]
        self._table: Optional[pa.Table] = raw[4]

    def to_query_result(self) -> QueryResult:
        """The rows of a query or metadata statement."""
        if self._table is None:
            raise _error(QueryError, codes.QUERY_FAILED, f"a {self.result_type} result has no rows")
        return QueryResult(self._table)

    def __repr__(self) -> str:
        if self.result_type == "ddl":
            return f"ExecuteResult(result_type='ddl', ddl_type={self.ddl_type!r}, ddl_object={self.ddl_object!r})"
        return f"ExecuteResult(result_type={self.result_type!r}, rows_affected={self.rows_affected})"


@dataclass(frozen=True)
class SourceInfo:
    """A source in the catalog."""

    name: str
    schema: pa.Schema
    watermark_column: Optional[str] = None


@dataclass(frozen=True)
class SinkInfo:
    """A sink in the catalog."""

    name: str


@dataclass(frozen=True)
class StreamInfo:
    """A stream or materialized view in the catalog."""

    name: str
    sql: str


@dataclass(frozen=True)
class PipelineMetrics:
    """Whole-pipeline counters."""

    total_events_ingested: int
    total_events_emitted: int
    total_events_dropped: int
    total_cycles: int
    total_batches: int
    uptime_secs: float
    state: str
    source_count: int
    stream_count: int
    sink_count: int
    pipeline_watermark: Optional[int]


@dataclass(frozen=True)
class SourceMetrics:
    """Counters of one source."""

    name: str
    total_events: int
    pending: int
    capacity: int
    is_backpressured: bool
    watermark: Optional[int]
    utilization: float
    connector_state: Optional[str] = None
    """State of the source's connector (None for sources fed by inserts)."""
    last_error: Optional[str] = None
    """The connector's most recent error."""
    dead_letters: int = 0
    """Records that could not be decoded (see the ``<source>_errors`` collection)."""
    retries: int = 0
    """Transient failures retried (for WebSocket clients: reconnects)."""
    details: Dict[str, int] = field(default_factory=dict)
    """Connector-specific gauges and counters (e.g. ``connected``, ``clients``, ``reconnects``)."""


@dataclass(frozen=True)
class SinkMetrics:
    """Counters of one sink."""

    name: str
    connector: str
    peer: str
    state: str
    rows_written: int
    epochs_committed: int
    pending_epochs: int
    dropped: int
    retries: int
    last_error: Optional[str]
    details: Dict[str, int] = field(default_factory=dict)
    """Connector-specific gauges and counters (e.g. ``clients``, ``slow_client_drops``)."""


@dataclass(frozen=True)
class StreamMetrics:
    """Counters of one stream."""

    name: str
    total_events: int
    epochs: int
    current_rows: int
    dropped: int
    last_error: Optional[str]
    sql: str
    late_rows: int = 0
    """Rows dropped because they arrived behind the watermark (windows, time-bounded joins)."""
    state_rows: int = 0
    """Rows held in join and window state."""


@dataclass(frozen=True)
class PipelineNode:
    """A node of the pipeline graph."""

    name: str
    node_type: str
    schema: Optional[pa.Schema] = None
    sql: Optional[str] = None


@dataclass(frozen=True)
class PipelineEdge:
    """A directed edge of the pipeline graph."""

    from_node: str
    to_node: str


@dataclass(frozen=True)
class PipelineTopology:
    """The pipeline graph."""

    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)


class _SubscriptionBase:
    """What every subscription shares: its schema, state and cancellation."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    @property
    def schema(self) -> pa.Schema:
        """Schema of delivered batches."""
        return self._sub.schema

    @property
    def is_active(self) -> bool:
        """True until cancelled or the pipeline stops."""
        return self._sub.is_active

    def cancel(self) -> None:
        """Stops the subscription (callable from any thread)."""
        self._sub.cancel()

    def _wait(self, timeout_ms: Optional[int]) -> QueryResult:
        epoch, batch = self._sub.next_timeout(timeout_ms)
        return QueryResult._from_batch(batch, epoch)

    def _poll(self) -> Optional[QueryResult]:
        item = self._sub.try_next()
        return None if item is None else QueryResult._from_batch(item[1], item[0])


class StreamSubscription(_SubscriptionBase):
    """A blocking subscription; iterate it or call `next()` / `next_timeout()` / `try_next()`."""

    def next(self) -> QueryResult:
        """Blocks for the next epoch's changes; raises SubscriptionError (501) once closed."""
        return self._wait(None)

    def next_timeout(self, timeout_ms: int) -> QueryResult:
        """Like `next()`, raising SubscriptionError (code 502) after `timeout_ms`."""
        return self._wait(int(timeout_ms))

    def try_next(self) -> Optional[QueryResult]:
        """The next item if one is ready, else None."""
        return self._poll()

    def __iter__(self) -> "StreamSubscription":
        return self

    def __next__(self) -> QueryResult:
        try:
            return self.next()
        except SubscriptionError as e:
            if getattr(e, "code", None) == codes.SUBSCRIPTION_CLOSED:
                raise StopIteration from None
            raise

    def __enter__(self) -> "StreamSubscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()


class AsyncStreamSubscription(_SubscriptionBase):
    """An async-iterable subscription (`async for batch in sub`)."""

    async def next(self) -> QueryResult:
        """Awaits the next epoch's changes."""
        while True:
            item = self._poll()
            if item is not None:
                return item
            try:
                return await asyncio.to_thread(self._wait, 100)
            except SubscriptionError as e:
                if getattr(e, "code", None) != codes.SUBSCRIPTION_TIMEOUT:
                    raise

    def __aiter__(self) -> "AsyncStreamSubscription":
        return self

    async def __anext__(self) -> QueryResult:
        try:
            return await self.next()
        except SubscriptionError as e:
            if getattr(e, "code", None) == codes.SUBSCRIPTION_CLOSED:
                raise StopAsyncIteration from None
            raise


class CallbackSubscription:
    """Calls `on_data(result)` for each item on a background thread until cancelled."""

    def __init__(self, sub: Any, on_data: Callable[[QueryResult], Any], on_error: Optional[Callable[[Exception], Any]]):
        self._sync = StreamSubscription(sub)
        self._thread = threading.Thread(target=self._run, args=(on_data, on_error), daemon=True)
        self._thread.start()

    def _run(self, on_data: Callable[[QueryResult], Any], on_error: Optional[Callable[[Exception], Any]]) -> None:
        while True:
            try:
                item = self._sync.next_timeout(100)
            except SubscriptionError as e:
                if getattr(e, "code", None) == codes.SUBSCRIPTION_TIMEOUT:
                    continue
                if getattr(e, "code", None) != codes.SUBSCRIPTION_CLOSED and on_error is not None:
                    on_error(e)
                return
            try:
                on_data(item)
            except Exception as e:  # the callback's own error goes to on_error, unchanged
                if on_error is None:
                    raise
                on_error(e)

    @property
    def is_active(self) -> bool:
        """True while the callback thread runs."""
        return self._thread.is_alive()

    def cancel(self) -> None:
        """Stops delivery and waits for the callback thread."""
        self._sync.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits for the subscription to end."""
        self._thread.join(timeout)


class Writer:
    """Writes into one source; a context manager that closes itself."""

    def __init__(self, conn: "Connection", name: str) -> None:
        self._conn = conn
        self._name = name
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise _error(IngestionError, codes.WRITER_CLOSED, f"the writer for '{self._name}' is closed")

    def insert(self, data: Any) -> int:
        """Inserts data (same forms as `Connection.insert`)."""
        self._check()
        return self._conn.insert(self._name, data)

    def flush(self) -> None:
        """Waits until everything written is reflected in every stream."""
        self._check()
        self._conn.flush()

    def watermark(self, ts: Any) -> None:
        """Declares that no event older than `ts` (ms since the epoch, or a datetime) follows."""
        self._check()
        self._conn._raw().advance_watermark(self._name, _to_millis(ts))

    @property
    def name(self) -> str:
        """The source written to."""
        return self._name

    @property
    def schema(self) -> pa.Schema:
        """The source's schema."""
        return self._conn.schema(self._name)

    @property
    def current_watermark(self) -> Optional[int]:
        """The source's event-time watermark (ms), if any."""
        m = self._conn.source_metrics(self._name)
        return None if m is None else m.watermark

    def close(self) -> None:
        """Closes the writer."""
        self._closed = True

    @property
    def is_closed(self) -> bool:
        """True after close()."""
        return self._closed

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- custom Python sources and sinks (connector = 'python') ------------------------------------

_SOURCE_ATTR = "__laminardb_source__"
_SINK_ATTR = "__laminardb_sink__"
# Sinks declared with @sink(name=...): every connection knows them.
_DECORATED_SINKS: dict[str, Callable[..., Any]] = {}
_CONNECTIONS: "weakref.WeakSet[Connection]" = weakref.WeakSet()


@dataclass(frozen=True)
class _SourceDecl:
    schema: Optional[pa.Schema]
    watermark: Optional[str]
    watermark_delay_ms: int


def source(
    schema: Optional[pa.Schema] = None, *, watermark: Optional[str] = None, watermark_delay_ms: int = 0
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares a generator function (or async generator function) as a source of rows with
    `schema`; register it with ``db.register_source(name, fn)``.

    The generator may yield a dict (one row), a list of dicts, a pyarrow RecordBatch or Table,
    or a pandas/polars DataFrame. It runs on a thread of its own (an async generator on an event
    loop that thread owns); when the pipeline cannot keep up, its ``yield`` blocks. `watermark`
    names the event-time column (also read from the schema's metadata key ``watermark``)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, _SOURCE_ATTR, _SourceDecl(schema, watermark, watermark_delay_ms))
        return fn

    return wrap


def sink(name: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares a function (or coroutine function) taking a pyarrow RecordBatch as a sink
    callback. With `name`, every connection can use it in
    ``CREATE SINK … WITH (connector = 'python', 'name' = '<name>')``; without, register it with
    ``db.register_sink(name, fn)``. Batches arrive in epoch order, one call at a time; an updating
    query's batches carry an ``op`` column (``insert``/``delete``)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, _SINK_ATTR, name)
        if name is not None:
            _DECORATED_SINKS[name] = fn
            for conn in list(_CONNECTIONS):
                conn._adopt_sink(name, fn)
        return fn

    return wrap


def _to_arrow(item: Any, schema: pa.Schema) -> pa.Table:
    """What a Python source yielded (other than dicts and lists of dicts) as a pyarrow Table."""
    if isinstance(item, pa.Table):
        return item
    if isinstance(item, pa.RecordBatch):
        return pa.Table.from_batches([item])
    module = type(item).__module__.split(".")[0]
    if module == "pandas":
        return pa.Table.from_pandas(item, preserve_index=False)
    if module == "polars":
        return item.to_arrow()
    if hasattr(item, "__arrow_c_stream__"):
        return pa.table(item)
    raise TypeError(
        "a Python source yields dicts, lists of dicts, pyarrow RecordBatches or Tables, or pandas/polars "
        f"DataFrames, not {type(item).__name__}"
    )


def _rows_to_table(rows: Sequence[dict]) -> pa.Table:
    """Columns from every key seen in any row (a key missing from a row is null there)."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return pa.table({k: [r.get(k) for r in rows] for k in keys})


def _to_millis(ts: Any) -> int:
    import datetime as _dt

    if isinstance(ts, _dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=_dt.timezone.utc)
        return int(ts.timestamp() * 1000)
    return int(ts)


_ARROW_TO_SQL = [
    (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_int8, "SMALLINT"),
    (pa.types.is_int16, "SMALLINT"),
    (pa.types.is_int32, "INT"),
    (pa.types.is_int64, "BIGINT"),
    (pa.types.is_uint8, "SMALLINT"),
    (pa.types.is_uint16, "INT"),
    (pa.types.is_uint32, "BIGINT"),
    (pa.types.is_float16, "REAL"),
    (pa.types.is_float32, "REAL"),
    (pa.types.is_float64, "DOUBLE"),
    (pa.types.is_string, "VARCHAR"),
    (pa.types.is_large_string, "VARCHAR"),
    (pa.types.is_binary, "BYTEA"),
    (pa.types.is_large_binary, "BYTEA"),
    (pa.types.is_date, "DATE"),
    (pa.types.is_time, "TIME"),
]


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    for pred, name in _ARROW_TO_SQL:
        if pred(t):
            return name
    raise _error(SchemaError, codes.INVALID_SCHEMA, f"no SQL type for Arrow type {t}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Connection:
    """A connection to an embedded LaminarDB database (see `laminardb.open`)."""

    def __init__(self, raw: Any, config: LaminarConfig) -> None:
        self._conn = raw
        self._config = config
        _LIVE.add(self)
        self._queries: dict[int, tuple[str, Any]] = {}
        self._next_query = 1
        # name -> (function, registered explicitly)
        self._py_sinks: dict[str, tuple[Callable[..., Any], bool]] = {}
        self._py_sources: dict[str, Callable[..., Any]] = {}
        for name, fn in list(_DECORATED_SINKS.items()):
            self._adopt_sink(name, fn)
        _CONNECTIONS.add(self)

    # -- custom sources and sinks --------------------------------------------------------------
    def _adopt_sink(self, name: str, fn: Callable[..., Any]) -> None:
        """Makes a @sink(name=...) callback known here (explicit registrations take precedence)."""
        if self._conn.is_closed or (name in self._py_sinks and self._py_sinks[name][1]):
            return
        self._conn.register_sink(name, fn, True)
        self._py_sinks[name] = (fn, False)

    def register_source(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        schema: Optional[pa.Schema] = None,
        watermark: Optional[str] = None,
        watermark_delay_ms: Optional[int] = None,
        replace: bool = False,
        options: Optional[dict[str, str]] = None,
    ) -> None:
        """Makes the generator function `fn` (see `laminardb.source`) the source `name`, usable
        in SQL, listed in `sources()` and reported by `source_metrics(name)`. The source is
        created (and kept in the catalog) if it does not exist, with `options` as further
        ``WITH`` options (e.g. ``{"retention": "0 rows"}``); one restored from the catalog is
        bound to `fn`. It starts with the pipeline (or at once when the pipeline runs)."""
        decl: Optional[_SourceDecl] = getattr(fn, _SOURCE_ATTR, None)
        schema = schema if schema is not None else (decl.schema if decl else None)
        if schema is None:
            raise _error(
                SchemaError, codes.INVALID_SCHEMA,
                f"source '{name}' needs a schema: decorate the function with @laminardb.source(schema=...) "
                "or pass schema=",
            )
        if not isinstance(schema, pa.Schema):
            schema = pa.schema(schema)
        if watermark is None and decl is not None:
            watermark = decl.watermark
        if watermark is None and schema.metadata and b"watermark" in schema.metadata:
            watermark = schema.metadata[b"watermark"].decode()
        delay = watermark_delay_ms if watermark_delay_ms is not None else (decl.watermark_delay_ms if decl else 0)
        extra = [(str(k), str(v)) for k, v in (options or {}).items()]
        self._raw().register_source(name, fn, schema, watermark, int(delay), replace, extra)
        self._py_sources[name] = fn

    def register_sink(self, name: str, fn: Callable[..., Any], *, replace: bool = False) -> None:
        """Makes `fn` (a function or coroutine function taking a pyarrow RecordBatch) the sink
        callback `name`, for ``CREATE SINK … WITH (connector = 'python', 'name' = '<name>')``.
        Registering a name twice raises ConnectorError unless `replace`."""
        current = self._py_sinks.get(name)
        if current is not None and current[1] and not replace:
            raise _error(
                ConnectorError, codes.CONNECTOR_CONFIG,
                f"a Python sink named '{name}' is already registered (pass replace=True to replace it)",
            )
        self._raw().register_sink(name, fn, True if current is not None else replace)
        self._py_sinks[name] = (fn, True)

    def _track(self, sql: str, sub: Any) -> Any:
        qid = self._next_query
        self._next_query += 1
        self._queries[qid] = (sql, sub)
        return sub

    # -- plumbing ----------------------------------------------------------------------------
    def _raw(self) -> Any:
        if self._conn.is_closed:
            raise _error(ConnectionError, codes.CONNECTION_CLOSED, "the connection is closed")
        return self._conn

    # -- properties --------------------------------------------------------------------------
    @property
    def config(self) -> LaminarConfig:
        """The settings the database was opened with."""
        return self._config

    @property
    def is_closed(self) -> bool:
        """True after close()."""
        return self._conn.is_closed

    @property
    def pipeline_state(self) -> str:
        """Created, Starting, Running, ShuttingDown, Stopped, or Failed (running, but a connector failed for good)."""
        return self._raw().pipeline_state

    @property
    def pipeline_watermark(self) -> Optional[int]:
        """Minimum event-time watermark (ms) over sources that declare one."""
        return self._raw().pipeline_watermark

    @property
    def total_events_processed(self) -> int:
        """Rows ingested so far."""
        return self.metrics().total_events_ingested

    @property
    def source_count(self) -> int:
        """Number of sources."""
        return len(self._raw().sources())

    @property
    def sink_count(self) -> int:
        """Number of sinks."""
        return len(self._raw().sinks())

    @property
    def active_query_count(self) -> int:
        """Number of streams and materialized views."""
        return len(self._raw().streams())

    @property
    def is_checkpoint_enabled(self) -> bool:
        """True when periodic checkpoints are on: `checkpoint_interval_ms` is set and the database
        has a directory (or `storage_dir`) to keep them in."""
        return bool(self._raw().is_checkpoint_enabled())

    def checkpoint(self) -> CheckpointResult:
        """Takes a checkpoint of the running pipeline now: operator state, source contents and
        positions, stream contents, written durably; exactly-once sinks then commit what it
        covers. Raises CheckpointError for an in-memory database, a stopped pipeline or storage
        problems. In a cluster, call it on process 0: it checkpoints every process at one epoch
        (each into its own directory), and fails if any of them cannot."""
        epoch, full, size, files, secs, path = self._raw().checkpoint()
        return CheckpointResult(epoch, full, size, files, secs * 1000.0, path)

    # -- SQL ---------------------------------------------------------------------------------
    def execute(self, sql: str) -> ExecuteResult:
        """Executes one statement (DDL, INSERT, SHOW, DESCRIBE, EXPLAIN or a query)."""
        return ExecuteResult(self._raw().execute(sql))

    def query(self, sql: str) -> QueryResult:
        """Runs an ad-hoc query over the current contents of sources, streams and views."""
        return QueryResult(self._raw().query(sql))

    sql = query

    def stream(self, sql: str) -> Iterator[QueryResult]:
        """Runs an ad-hoc query and yields its result one record batch at a time."""
        table = self.query(sql).to_arrow()
        for batch in table.to_batches():
            yield QueryResult._from_batch(batch)

    def explain(self, sql: str) -> str:
        """The dataflow and logical plans of a query."""
        rows = self._raw().query("EXPLAIN " + sql).to_pylist()
        return "\n".join(f"{r['plan_type']}:\n{r['plan']}" for r in rows)

    # -- ingestion ---------------------------------------------------------------------------
    def insert(self, name: str, data: Any) -> int:
        """Inserts rows: a pyarrow RecordBatch/Table, a pandas or polars DataFrame, a dict (one
        row, or columns of equal-length lists) or a list of dicts. All or nothing."""
        raw = self._raw()
        if isinstance(data, dict):
            # One row of plain values goes straight in (a list or tuple value, as in a dict of
            # columns, makes it answer None).
            fast = raw.insert_row(name, data)
            if fast is not None:
                return fast
            if data and all(isinstance(v, (list, tuple)) for v in data.values()):
                table = pa.table({k: list(v) for k, v in data.items()})
            else:
                table = _rows_to_table([data])
            return raw.insert_table(name, table)
        if isinstance(data, pa.RecordBatch):
            return raw.insert_batch(name, data)
        if isinstance(data, pa.Table):
            return raw.insert_table(name, data)
        if isinstance(data, (list, tuple)):
            if not data:
                return 0
            if not all(isinstance(r, dict) for r in data):
                raise _error(IngestionError, codes.INGESTION_FAILED, "a list must contain dicts (one per row)")
            return raw.insert_table(name, _rows_to_table(data))
        module = type(data).__module__.split(".")[0]
        if module == "pandas":
            return raw.insert_table(name, pa.Table.from_pandas(data, preserve_index=False))
        if module == "polars":
            return raw.insert_table(name, data.to_arrow())
        if hasattr(data, "__arrow_c_stream__"):
            return raw.insert_table(name, pa.table(data))
        raise _error(IngestionError, codes.INGESTION_FAILED, f"cannot insert data of type {type(data).__name__}")

    def insert_json(self, name: str, data: str) -> int:
        """Inserts JSON: an object, an array of objects, or newline-delimited objects."""
        return self._raw().insert_json(name, data)

    def insert_csv(self, name: str, data: str) -> int:
        """Inserts CSV text with a header line."""
        return self._raw().insert_csv(name, data)

    def writer(self, name: str) -> Writer:
        """A writer for one source."""
        self.schema(name)
        return Writer(self, name)

    def create_table(self, name: str, schema: pa.Schema) -> ExecuteResult:
        """Creates a source from a pyarrow schema."""
        cols = ", ".join(
            f"{_quote(f.name)} {_sql_type(f.type)}{'' if f.nullable else ' NOT NULL'}" for f in schema
        )
        return self.execute(f"CREATE SOURCE {_quote(name)} ({cols})")

    def schema(self, name: str) -> pa.Schema:
        """Schema of a source or stream."""
        return self._raw().schema(name)

    def flush(self) -> None:
        """Waits until everything inserted so far is reflected in every stream."""
        self._raw().flush()

    def barrier(self) -> None:
        """In a cluster: waits until every process has called `barrier` (as many times), then
        flushes process 0, whose results then hold every row any process fed before its call.
        Alone, the same as `flush`."""
        self._raw().barrier()

    # -- catalog -----------------------------------------------------------------------------
    def sources(self) -> list[SourceInfo]:
        """Every source."""
        return [SourceInfo(n, s, w) for (n, s, w, _c, _pk) in self._raw().sources()]

    def sinks(self) -> list[SinkInfo]:
        """Every sink."""
        return [SinkInfo(n) for (n, _sql, _c) in self._raw().sinks()]

    def streams(self) -> list[StreamInfo]:
        """Every stream and materialized view."""
        return [StreamInfo(n, sql) for (n, sql, _s, _mv) in self._raw().streams()]

    def materialized_views(self) -> list[StreamInfo]:
        """Every materialized view."""
        return [StreamInfo(n, sql) for (n, sql, _s, mv) in self._raw().streams() if mv]

    def list_tables(self) -> list[str]:
        """Source names."""
        return [s.name for s in self.sources()]

    def list_streams(self) -> list[str]:
        """Stream and view names."""
        return [s.name for s in self.streams()]

    def list_sinks(self) -> list[str]:
        """Sink names."""
        return [s.name for s in self.sinks()]

    # -- subscriptions -----------------------------------------------------------------------
    def subscribe_stream(self, name: str) -> StreamSubscription:
        """Subscribes to a stream: one result per epoch with changes."""
        return StreamSubscription(self._raw().subscribe(name))

    async def subscribe_stream_async(self, name: str) -> AsyncStreamSubscription:
        """Subscribes for `async for`."""
        return AsyncStreamSubscription(self._raw().subscribe(name))

    def subscribe_stream_callback(
        self,
        name: str,
        on_data: Callable[[QueryResult], Any],
        on_error: Optional[Callable[[Exception], Any]] = None,
    ) -> CallbackSubscription:
        """Calls `on_data` for each result on a background thread."""
        return CallbackSubscription(self._raw().subscribe(name), on_data, on_error)

    def subscribe(self, sql: str) -> StreamSubscription:
        """Subscribes to the changes of an ad-hoc continuous query (SELECT …); the query stops
        when the subscription is cancelled and garbage-collected."""
        return StreamSubscription(self._track(sql, self._raw().subscribe_query(sql)))

    async def subscribe_async(self, sql: str) -> AsyncStreamSubscription:
        """`subscribe` for `async for`."""
        return AsyncStreamSubscription(self._track(sql, self._raw().subscribe_query(sql)))

    def subscribe_callback(
        self,
        sql: str,
        on_data: Callable[[QueryResult], Any],
        on_error: Optional[Callable[[Exception], Any]] = None,
    ) -> CallbackSubscription:
        """Calls `on_data` for each change of an ad-hoc continuous query, on a background thread."""
        return CallbackSubscription(self._track(sql, self._raw().subscribe_query(sql)), on_data, on_error)

    def queries(self) -> list[QueryInfo]:
        """The ad-hoc continuous queries started by this connection."""
        return [QueryInfo(qid, sql, sub.is_active) for qid, (sql, sub) in self._queries.items()]

    def cancel_query(self, query_id: int) -> bool:
        """Cancels an ad-hoc continuous query; False when the id is unknown."""
        entry = self._queries.get(query_id)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def query_stream(self, name: str, filter: Optional[str] = None) -> QueryResult:  # noqa: A002
        """The current contents of a stream or view, optionally filtered by a SQL condition."""
        self.schema(name)
        return self.query(f"SELECT * FROM {_quote(name)}" + (f" WHERE {filter}" if filter else ""))

    def stats(self, name: str) -> dict[str, int]:
        """Row count and Arrow size in bytes of a source's (or stream's) current contents."""
        table = self.query(f"SELECT * FROM {_quote(name)}").to_arrow()
        return {"row_count": table.num_rows, "size_bytes": table.nbytes}

    def tables(self) -> list[str]:
        """Source names (alias of `list_tables`)."""
        return self.list_tables()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the pipeline."""
        self._raw().start()

    def shutdown(self) -> None:
        """Drains in-flight data and stops the pipeline; subscriptions end."""
        self._raw().shutdown()

    def close(self) -> None:
        """Shuts down and releases the database; later calls raise ConnectionError."""
        if not self._conn.is_closed:
            self._conn.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.close)

    # -- metrics -----------------------------------------------------------------------------
    def metrics(self) -> PipelineMetrics:
        """Whole-pipeline counters."""
        return PipelineMetrics(**self._raw().metrics())

    def source_metrics(self, name: str) -> Optional[SourceMetrics]:
        """Counters of one source, or None."""
        m = self._raw().source_metrics(name)
        return None if m is None else SourceMetrics(**m)

    def all_source_metrics(self) -> list[SourceMetrics]:
        """Counters of every source."""
        return [m for m in (self.source_metrics(n) for n in self.list_tables()) if m is not None]

    def stream_metrics(self, name: str) -> Optional[StreamMetrics]:
        """Counters of one stream, or None."""
        m = self._raw().stream_metrics(name)
        return None if m is None else StreamMetrics(**m)

    def sink_metrics(self, name: str) -> Optional[SinkMetrics]:
        """Counters of one sink (rows written, epochs committed, connector state), or None."""
        m = self._raw().sink_metrics(name)
        return None if m is None else SinkMetrics(**m)

    def all_sink_metrics(self) -> list[SinkMetrics]:
        """Counters of every sink."""
        return [m for m in (self.sink_metrics(n) for n in self.list_sinks()) if m is not None]

    def all_stream_metrics(self) -> list[StreamMetrics]:
        """Counters of every stream."""
        return [m for m in (self.stream_metrics(n) for n in self.list_streams()) if m is not None]

    def topology(self) -> PipelineTopology:
        """Sources, streams and sinks with the edges between them."""
        nodes, edges = self._raw().topology()
        return PipelineTopology(
            nodes=[PipelineNode(n, t, s, q) for (n, t, s, q) in nodes],
            edges=[PipelineEdge(a, b) for (a, b) in edges],
        )

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else self._conn.pipeline_state
        return f"Connection(state={state!r}, config={self._config!r})"


_LIVE: "weakref.WeakSet[Connection]" = weakref.WeakSet()


@atexit.register
def _join_threads() -> None:
    """At interpreter exit, before finalization: closes the connections still open and waits
    for the threads of Python sources and sinks to return, so none of them takes the GIL again
    once the interpreter is being torn down."""
    for conn in list(_LIVE):
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    for t in list(getattr(_ext, "_threads", [])):
        t.join(timeout=5.0)


def open(path: str, *, config: Optional[LaminarConfig] = None) -> Connection:  # noqa: A001
    """Opens (or creates) a database in directory `path`; ":memory:" keeps nothing on disk."""
    config = config or LaminarConfig()
    raw = _ext.Connection.open(
        str(path),
        buffer_size=config.buffer_size,
        storage_dir=config.storage_dir,
        checkpoint_interval_ms=config.checkpoint_interval_ms,
        workers=config.workers,
        processes=config.processes,
        process_index=config.process_index,
    )
    return Connection(raw, config)


def connect(uri: str, *, config: Optional[LaminarConfig] = None) -> Connection:
    """Alias of `open`."""
    return open(uri, config=config)


BatchWriter = Writer
Subscription = StreamSubscription
AsyncSubscription = AsyncStreamSubscription

_default: Optional[Connection] = None
_default_lock = threading.Lock()


def _default_connection() -> Connection:
    global _default
    with _default_lock:
        if _default is None or _default.is_closed:
            _default = open(":memory:")
        return _default


def execute(query: str) -> ExecuteResult:
    """Executes a statement on the process-wide in-memory default connection."""
    return _default_connection().execute(query)


def sql(query: str) -> QueryResult:
    """Runs a query on the process-wide in-memory default connection."""
    return _default_connection().query(query)


def mv(conn: Connection, name: str, sql_def: Optional[str] = None) -> MaterializedView:
    """A handle on materialized view `name`, created from `sql_def` when given and absent."""
    return MaterializedView(conn, name, sql_def)


# Keep the public namespace to the API itself.
del TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, dataclass, field, annotations

"""Convenience types: change events, schema and column descriptors, metric summaries and the
materialized-view helper returned by `laminardb.mv`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """A column: name, SQL type name, nullability."""

    name: str
    type: str
    nullable: bool = True


class Schema:
    """A pyarrow schema with column-level accessors."""

    def __init__(self, arrow_schema: pa.Schema) -> None:
        self.arrow_schema = arrow_schema

    @property
    def names(self) -> list[str]:
        """Column names in order."""
        return list(self.arrow_schema.names)

    @property
    def columns(self) -> list[Column]:
        """Column descriptors in order."""
        return [Column(f.name, str(f.type), f.nullable) for f in self.arrow_schema]

    def __len__(self) -> int:
        return len(self.arrow_schema)

    def __iter__(self) -> Iterator[Column]:
        return iter(self.columns)

    def __repr__(self) -> str:
        return f"Schema({', '.join(f'{c.name}: {c.type}' for c in self.columns)})"


class ChangeRow:
    """One changed row and the operation that produced it."""

    def __init__(self, op: str, data: dict[str, Any]) -> None:
        self.op = op
        self._data = dict(data)

    def __getitem__(self, column: str) -> Any:
        return self._data[column]

    def keys(self) -> list[str]:
        """Column names."""
        return list(self._data)

    def values(self) -> list[Any]:
        """Values in column order."""
        return list(self._data.values())

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict."""
        return dict(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChangeRow) and (self.op, self._data) == (other.op, other._data)

    def __repr__(self) -> str:
        return f"ChangeRow(op={self.op!r}, data={self._data!r})"


class ChangeEvent:
    """A batch of changes from a subscription, iterable as `ChangeRow`s."""

    def __init__(self, query_result: Any, op: str = "Insert") -> None:
        self._result = query_result
        self._op = op

    def __iter__(self) -> Iterator[ChangeRow]:
        return (ChangeRow(self._op, row) for row in self._result.to_dicts())

    def __len__(self) -> int:
        return self._result.num_rows

    def arrow(self) -> pa.Table:
        """The rows as a pyarrow Table."""
        return self._result.to_arrow()

    def df(self) -> Any:
        """The rows as a pandas DataFrame."""
        return self._result.to_pandas()

    def pl(self, *, lazy: bool = False) -> Any:
        """The rows as a polars DataFrame (or LazyFrame)."""
        return self._result.to_polars(lazy=lazy)

    def __repr__(self) -> str:
        return f"ChangeEvent(rows={len(self)}, op={self._op!r})"


class Metrics:
    """Pipeline metrics with derived rates."""

    def __init__(self, pipeline_metrics: Any) -> None:
        self._m = pipeline_metrics

    @property
    def total_events(self) -> int:
        """Rows ingested."""
        return self._m.total_events_ingested

    @property
    def uptime_secs(self) -> float:
        """Seconds since start()."""
        return self._m.uptime_secs

    @property
    def state(self) -> str:
        """Pipeline state."""
        return self._m.state

    @property
    def events_per_second(self) -> float:
        """Average ingestion rate since start()."""
        up = self._m.uptime_secs
        return self._m.total_events_ingested / up if up > 0 else 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def __repr__(self) -> str:
        return f"Metrics(state={self.state!r}, total_events={self.total_events}, events_per_second={self.events_per_second:.1f})"


@dataclass(frozen=True)
class Watermark:
    """An event-time watermark (ms since the epoch) and how far it trails wall-clock time."""

    current: int
    lag_ms: int = 0


@dataclass(frozen=True)
class TableStats:
    """Size of a source's current contents."""

    row_count: int
    size_bytes: int


@dataclass(frozen=True)
class CheckpointResult:
    """What `Connection.checkpoint()` wrote: the last epoch it covers (its id), whether it holds
    the whole operator state or only the changes since the previous one, its size and where it
    is."""

    checkpoint_id: int
    full: bool
    bytes: int
    files: int
    duration_ms: float
    path: str

    @property
    def epoch(self) -> int:
        """The last epoch the checkpoint includes (the same as `checkpoint_id`)."""
        return self.checkpoint_id

    def __bool__(self) -> bool:
        return True

    def __int__(self) -> int:
        return self.checkpoint_id


@dataclass(frozen=True)
class CheckpointStatus:
    """Whether checkpointing is configured, and the last checkpoint's id."""

    checkpoint_id: Optional[int]
    enabled: bool


@dataclass(frozen=True)
class QueryInfo:
    """An ad-hoc continuous query started with `Connection.subscribe*`."""

    id: int
    sql: str
    active: bool


class MaterializedView:
    """A handle on a named stream or materialized view (see `laminardb.mv`)."""

    def __init__(self, conn: Any, name: str, sql: Optional[str] = None) -> None:
        self._conn = conn
        self.name = name
        if sql is not None and name not in conn.list_streams():
            conn.execute(f"CREATE MATERIALIZED VIEW {name} AS {sql}")
        self._sql = sql

    @property
    def sql(self) -> Optional[str]:
        """The defining query."""
        for s in self._conn.streams():
            if s.name == self.name:
                return s.sql
        return self._sql

    @property
    def schema(self) -> pa.Schema:
        """Output schema."""
        return self._conn.schema(self.name)

    def query(self, where: Optional[str] = None) -> Any:
        """The current rows, optionally filtered by a SQL condition."""
        sql = f"SELECT * FROM {self.name}" + (f" WHERE {where}" if where else "")
        return self._conn.query(sql)

    def subscribe(self) -> Any:
        """Subscribes to the view's changes."""
        return self._conn.subscribe_stream(self.name)

    def __repr__(self) -> str:
        return f"MaterializedView(name={self.name!r})"

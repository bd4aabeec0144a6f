"""Suite adapter for Pathway (``import pathway`` in the ``pathway`` virtualenv).

Every workload is a Pathway program written with Pathway's own table operators (``filter``,
``select``, ``groupby().reduce()``, ``join``, ``windowby`` with ``pw.temporal.tumbling`` /
``pw.temporal.sliding``); ``PEERS.md`` says per workload how.

Inputs, prepared before the clock starts:

- append-only inputs: one CSV file per step (written with ``pyarrow.csv``; event times as
  ISO-8601 text, which Pathway parses into ``DateTimeNaive``), read by
  ``pw.io.csv.read(mode="static")``. Pathway reads the files in name order (arrival order) and
  commits what it has read as its next logical time (one file, or several when it reads ahead
  of the computation), so the computation is updated incrementally, batch after batch.
- upsert inputs (``Inputs.primary_keys``: the join), and every input of a workload with
  barriers: one Python connector per input (``pw.io.python.ConnectorSubject``; for upsert
  inputs ``session_type="upsert"`` with the primary key in the schema, so a row with a known
  key replaces the earlier one), fed from pre-built row dicts. The connectors send the steps in
  their global order, commit after each step, and at a barrier wait until Pathway has
  processed everything sent so far (see :class:`_Progress`).

Windowed workloads get ``common_behavior(cutoff=watermark delay)``: a window stops taking rows
once the newest event time seen is ``delay`` past the window's end, the watermark of the SQL
sources.

The result goes to ``pw.io.csv.write``, Pathway's own (Rust) sink, which writes every change
(row, time, diff). The clock covers ``pw.run()``: building the dataflow, reading every input,
computing, and writing every change of the result; it stops when ``pw.run`` returns, i.e. when
all inputs are exhausted and the result is final and written. Reading that file back and
adding up the diffs per row (the final multiset of rows) happens after the clock. ``workers``
sets ``PATHWAY_THREADS``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from workloads import Inputs

_SEQ = "_seq"  # hidden per-row sequence number of the Python connectors' rows (see _Progress)
_ID = "id_"  # ``id`` names Pathway's row id: a column ``id`` (input or result) is ``id_`` in Pathway
_BARRIER_TIMEOUT_S = 300.0


def _pw_name(name: str) -> str:
    return _ID if name == "id" else name


# --------------------------------------------------------------------------------------------
# Inputs.


def _pw_type(pw: Any, t: pa.DataType) -> Any:
    if pa.types.is_timestamp(t):
        return pw.DateTimeNaive
    if pa.types.is_integer(t):
        return int
    if pa.types.is_floating(t):
        return float
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return str
    raise TypeError(f"no Pathway type for {t}")


def _schema(pw: Any, name: str, schema: pa.Schema, key: list[str], seq: bool) -> Any:
    cols = {
        _pw_name(f.name): pw.column_definition(dtype=_pw_type(pw, f.type), primary_key=f.name in key)
        for f in schema
    }
    if seq:
        cols[_SEQ] = pw.column_definition(dtype=int)
    return pw.schema_builder(cols, name=f"{name}_schema")


def _csv_ready(batch: pa.RecordBatch) -> pa.Table:
    """The batch with timestamps as ISO-8601 text (Pathway's DateTimeNaive format)."""
    table = pa.Table.from_batches([batch])
    table = table.rename_columns([_pw_name(c) for c in table.column_names])
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, pc.strftime(table.column(i), "%Y-%m-%dT%H:%M:%S"))
    return table


def _write_csv_inputs(inputs: Inputs, root: Path, skip: set[str]) -> dict[str, Path]:
    dirs = {}
    for name in inputs.schemas:
        dirs[name] = root / name
        dirs[name].mkdir()
    for i, (name, batch) in enumerate(inputs.steps):
        if name in skip:
            continue
        pcsv.write_csv(_csv_ready(batch), dirs[name] / f"{i:09d}.csv")
    return dirs


class _Progress:
    """Tells a barrier when Pathway has processed every row sent so far.

    Each Python-fed input table gets a one-row companion ``MAX(_seq)`` (the newest row sent is
    always present in an upsert table, so the maximum is the last sequence number sent), and the
    result a one-row ``COUNT(*)``. One subscription watches the concatenation of these rows: its
    ``on_time_end(t)`` means the result *and* the inputs are complete up to logical time ``t``.
    A barrier waits until every input's maximum reached the last number sent (which tells the
    logical time ``t_in`` of the barrier's rows), then until the watch closed a time ``>= t_in``.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: dict[int, tuple[int, int]] = {}  # input index -> (max seq, logical time)
        self.closed = -1  # latest logical time closed at the watch sink

    def on_change(self, key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition and row["src"] >= 0:
            with self.cond:
                self.seen[row["src"]] = (row["v"], time)

    def on_time_end(self, time: int) -> None:
        with self.cond:
            self.closed = max(self.closed, time)
            self.cond.notify_all()

    def wait(self, sent: dict[int, int]) -> None:
        def done() -> bool:
            if any(self.seen.get(src, (-1, 0))[0] < seq for src, seq in sent.items()):
                return False
            return self.closed >= max(self.seen[src][1] for src in sent)

        with self.cond:
            if not self.cond.wait_for(done, timeout=_BARRIER_TIMEOUT_S):
                raise TimeoutError(
                    f"barrier not processed within {_BARRIER_TIMEOUT_S} s: {self.seen}, {sent}"
                )


class _Sequencer:
    """Hands the Python-fed steps to their connectors one at a time, in their global order."""

    def __init__(
        self, inputs: Inputs, fed: set[str], rows: list[list[dict[str, Any]]], progress: _Progress
    ) -> None:
        self.order = [i for i, (name, _) in enumerate(inputs.steps) if name in fed]
        self.names = [name for name, _ in inputs.steps]
        self.rows = rows
        self.barriers = set(inputs.barriers)
        self.src = {name: i for i, name in enumerate(inputs.schemas)}
        self.progress = progress
        self.turn = 0  # position in `order` of the step to send next
        self.sent: dict[int, int] = {}  # input index -> last sequence number sent
        self.cond = threading.Condition()
        self.error: BaseException | None = None

    def _turn_of(self, pos: int) -> Callable[[], bool]:
        return lambda: self.turn == pos or self.error is not None

    def feed(self, name: str, subject: Any) -> None:
        for pos, i in enumerate(self.order):
            if self.names[i] != name:
                continue
            with self.cond:
                self.cond.wait_for(self._turn_of(pos))
                if self.error is not None:
                    return
            try:
                for row in self.rows[i]:
                    subject.next(**row)
                subject.commit()
                if self.rows[i]:
                    self.sent[self.src[name]] = self.rows[i][-1][_SEQ]
                if i in self.barriers and self.sent:
                    self.progress.wait(dict(self.sent))
            except BaseException as e:
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                raise
            with self.cond:
                self.turn = pos + 1
                self.cond.notify_all()


def _python_rows(inputs: Inputs, fed: set[str]) -> list[list[dict[str, Any]]]:
    """Per step, the rows of Python-fed inputs as keyword dicts (empty for CSV-fed steps)."""
    out: list[list[dict[str, Any]]] = []
    seq = 0
    for name, batch in inputs.steps:
        if name not in fed:
            out.append([])
            continue
        names = [_pw_name(c) for c in batch.schema.names]
        rows = batch.rename_columns(names).to_pylist()
        for r in rows:
            r[_SEQ] = seq
            seq += 1
        out.append(rows)
    return out


def _inputs(pw: Any, inputs: Inputs, root: Path) -> tuple[dict[str, Any], Callable[[Any], None]]:
    """Pathway tables per input, and a hook that wires the barrier watch to the result."""
    # Barriers need the Python connectors (a static CSV read cannot pause); otherwise only the
    # upsert inputs use them.
    fed_names = set(inputs.schemas) if inputs.barriers else set(inputs.primary_keys)
    dirs = _write_csv_inputs(inputs, root, fed_names)
    progress = _Progress()
    seqr = _Sequencer(inputs, fed_names, _python_rows(inputs, fed_names), progress)
    tables: dict[str, Any] = {}
    fed: dict[str, Any] = {}
    for name, schema in inputs.schemas.items():
        key = inputs.primary_keys.get(name, [])
        if name not in fed_names:
            tables[name] = pw.io.csv.read(
                str(dirs[name]),
                schema=_schema(pw, name, schema, [], False),
                mode="static",
                name=f"csv_{name}",
            )
            continue

        class Subject(pw.io.python.ConnectorSubject):
            def __init__(self, input_name: str, upsert: bool) -> None:
                super().__init__(session_type="upsert" if upsert else "native")
                self.input_name = input_name

            def run(self) -> None:
                seqr.feed(self.input_name, self)

        fed[name] = pw.io.python.read(
            Subject(name, bool(key)),
            schema=_schema(pw, name, schema, key, True),
            autocommit_duration_ms=None,
            name=f"python_{name}",
        )
        tables[name] = fed[name]

    def watch(result: Any) -> None:
        if not fed:
            return
        parts = [t.reduce(src=seqr.src[name], v=pw.reducers.max(pw.this[_SEQ])) for name, t in fed.items()]
        parts.append(result.reduce(src=-1, v=pw.reducers.count()))
        pw.io.subscribe(
            pw.Table.concat_reindex(*parts),
            on_change=progress.on_change,
            on_time_end=progress.on_time_end,
            name="barrier_watch",
        )

    return tables, watch


# --------------------------------------------------------------------------------------------
# Workloads.


def _behavior(pw: Any, inputs: Inputs) -> Any:
    return pw.temporal.common_behavior(cutoff=dt.timedelta(milliseconds=inputs.watermark_delay_ms))


def _w1(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    s = t["trades"]
    return s.groupby(s.symbol).reduce(
        s.symbol, n=pw.reducers.count(), p=pw.reducers.avg(s.price), m=pw.reducers.max(s.price)
    )


def _filter_project(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    s = t["trades"]
    return s.filter(s.price > 100).select(
        pw.this.id_, pw.this.sym, notional=pw.this.price * pw.this.qty, marked=pw.this.price * 1.1
    )


def _groupby_1m(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    s = t["t"]
    return s.groupby(s.k).reduce(s.k, n=pw.reducers.count(), s=pw.reducers.sum(s.v))


def _join(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    o, c = t["orders"], t["customers"]
    return o.join(c, o.k == c.k).select(o.id_, o.amount, c.name)


def _window(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    ev = t["ev"]
    return ev.windowby(
        ev.ts,
        window=pw.temporal.tumbling(duration=dt.timedelta(minutes=1)),
        instance=ev.k,
        behavior=_behavior(pw, inputs),
    ).reduce(
        k=pw.this._pw_instance,
        window_start=pw.this._pw_window_start,
        window_end=pw.this._pw_window_end,
        n=pw.reducers.count(),
        s=pw.reducers.sum(pw.this.v),
    )


def _q0(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    b = t["bid"]
    return b.select(b.auction, b.bidder, b.price, b.channel, b.url, b.date_time, b.extra)


def _q1(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    b = t["bid"]
    return b.select(b.auction, b.bidder, price=b.price * 0.908, date_time=b.date_time, extra=b.extra)


def _q2(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    b = t["bid"]
    return b.filter(b.auction % 123 == 0).select(pw.this.auction, pw.this.price)


def _q3(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    a = t["auction"].filter(pw.this.category == 10)
    p = t["person"].filter((pw.this.state == "OR") | (pw.this.state == "ID") | (pw.this.state == "CA"))
    return a.join(p, a.seller == p.id_).select(p.name, p.city, p.state, id_=a.id_)


def _q4(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    a, b = t["auction"], t["bid"]
    joined = a.join(b, a.id_ == b.auction).select(
        aid=a.id_, category=a.category, price=b.price, at=b.date_time, opens=a.date_time, expires=a.expires
    )
    valid = joined.filter((pw.this.at >= pw.this.opens) & (pw.this.at <= pw.this.expires))
    q = valid.groupby(pw.this.aid, pw.this.category).reduce(
        pw.this.category, final=pw.reducers.max(pw.this.price)
    )
    return q.groupby(q.category).reduce(q.category, avg_final=pw.reducers.avg(q.final))


def _q5(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    b = t["bid"]
    counts = b.windowby(
        b.date_time,
        window=pw.temporal.sliding(hop=dt.timedelta(seconds=2), duration=dt.timedelta(seconds=10)),
        instance=b.auction,
        behavior=_behavior(pw, inputs),
    ).reduce(
        auction=pw.this._pw_instance,
        window_start=pw.this._pw_window_start,
        window_end=pw.this._pw_window_end,
        num=pw.reducers.count(),
    )
    m = counts.groupby(counts.window_start, counts.window_end).reduce(
        counts.window_start, counts.window_end, maxn=pw.reducers.max(counts.num)
    )
    hot = counts.join(m, counts.window_start == m.window_start, counts.window_end == m.window_end).select(
        counts.window_start, counts.window_end, counts.auction, counts.num, maxn=m.maxn
    )
    return hot.filter(hot.num >= hot.maxn).select(
        pw.this.window_start, pw.this.window_end, pw.this.auction, pw.this.num
    )


def _q7(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    b = t["bid"]
    w = b.windowby(
        b.date_time,
        window=pw.temporal.tumbling(duration=dt.timedelta(seconds=10)),
        behavior=_behavior(pw, inputs),
    ).reduce(
        window_start=pw.this._pw_window_start,
        window_end=pw.this._pw_window_end,
        maxprice=pw.reducers.max(pw.this.price),
    )
    j = b.join(w, b.price == w.maxprice).select(
        b.auction, b.price, b.bidder, b.date_time, ws=w.window_start, we=w.window_end
    )
    return j.filter((j.date_time >= j.ws) & (j.date_time < j.we)).select(
        pw.this.auction, pw.this.price, pw.this.bidder, pw.this.date_time
    )


def _q8(pw: Any, t: dict[str, Any], inputs: Inputs) -> Any:
    window = pw.temporal.tumbling(duration=dt.timedelta(seconds=10))
    person = t["person"]
    # GROUP BY id, name, TUMBLE(...): the window's instance is the (id, name) pair
    p = person.windowby(
        person.date_time,
        window=window,
        instance=pw.make_tuple(person.id_, person.name),
        behavior=_behavior(pw, inputs),
    ).reduce(
        id_=pw.this._pw_instance.get(0),
        name=pw.this._pw_instance.get(1),
        window_start=pw.this._pw_window_start,
        window_end=pw.this._pw_window_end,
    )
    auction = t["auction"]
    a = auction.windowby(
        auction.date_time, window=window, instance=auction.seller, behavior=_behavior(pw, inputs)
    ).reduce(
        seller=pw.this._pw_instance,
        window_start=pw.this._pw_window_start,
        window_end=pw.this._pw_window_end,
    )
    return p.join(
        a, p.id_ == a.seller, p.window_start == a.window_start, p.window_end == a.window_end
    ).select(id_=pw.unwrap(p.id_), name=pw.unwrap(p.name), window_start=p.window_start)


_QUERIES: dict[str, Callable[[Any, dict[str, Any], Inputs], Any]] = {
    "w1": _w1,
    "filter_project": _filter_project,
    "groupby_1m": _groupby_1m,
    "join": _join,
    "window": _window,
    "q0": _q0,
    "q1": _q1,
    "q2": _q2,
    "q3": _q3,
    "q4": _q4,
    "q5": _q5,
    "q7": _q7,
    "q8": _q8,
}


# --------------------------------------------------------------------------------------------
# Output and the run.


def _arrow_type(pw: Any, hint: Any) -> pa.DataType:
    if hint is int:
        return pa.int64()
    if hint is float:
        return pa.float64()
    if hint is str:
        return pa.string()
    if hint is pw.DateTimeNaive:
        return pa.timestamp("ns")
    raise TypeError(f"no Arrow type for the Pathway column type {hint}")


def _final_rows(path: Path, types: dict[str, pa.DataType]) -> pa.Table:
    """The result from the change stream Pathway wrote: every row (time, diff) consolidated to
    the multiset of rows whose diffs add up to a positive count."""
    schema = pa.schema([(_pw_name(c), t) for c, t in types.items()])
    if not path.exists():
        return schema.empty_table().rename_columns(list(types))
    changes = pcsv.read_csv(
        path,
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={**{f.name: f.type for f in schema}, "time": pa.int64(), "diff": pa.int64()},
            strings_can_be_null=False,
        ),
    )
    value_cols = schema.names
    net = changes.group_by(value_cols, use_threads=False).aggregate([("diff", "sum")])
    counts: list[int] = [c or 0 for c in net.column("diff_sum").to_pylist()]
    rows = net.select(value_cols).take(
        pa.array([i for i, c in enumerate(counts) for _ in range(max(c, 0))], pa.int64())
    )
    cols = [c.cast(pa.timestamp("ms")) if pa.types.is_timestamp(c.type) else c for c in rows.columns]
    return pa.table(cols, names=list(types))


def run(inputs: Inputs, workers: int = 1) -> tuple[float, pa.Table]:
    import pathway as pw
    from pathway.internals.parse_graph import G

    G.clear()  # a fresh dataflow per call, even within one process
    os.environ["PATHWAY_THREADS"] = str(workers)
    root = Path(tempfile.mkdtemp(prefix="pathway-suite-"))
    try:
        tables, watch = _inputs(pw, inputs, root)
        result = _QUERIES[inputs.workload](pw, tables, inputs)
        types = {("id" if c == _ID else c): _arrow_type(pw, h) for c, h in result.typehints().items()}
        out = root / "result.csv"
        pw.io.csv.write(result, str(out), name="result")
        watch(result)
        t = time.perf_counter()
        pw.run(monitoring_level=pw.MonitoringLevel.NONE)
        seconds = time.perf_counter() - t
        final = _final_rows(out, types)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        G.clear()
    return seconds, final

"""Suite adapter for Bytewax (``import bytewax`` in the ``bytewax`` virtualenv).

Every workload is a Bytewax dataflow built from its operators (``map``, ``filter_map``,
``flat_map``, ``branch``, ``merge``, ``key_on``, ``stateful_batch``, and the windowing operators
``fold_window`` with ``TumblingWindower`` / ``SlidingWindower`` over an ``EventClock``);
``PEERS.md`` says per workload how. Bytewax processes Python objects, so each step's rows are
converted to Python tuples (event times as timezone-aware UTC ``datetime``) before the clock
starts; the tuples are the engine's input.

One source partition replays the steps in their global order, one step per ``next_batch``
(inputs of multi-input workloads are tagged and split again inside the dataflow). After a
barrier step the source emits nothing until the sink has acknowledged every row sent so far,
so the engine has processed them.

Aggregates that are not windowed are updating: a ``stateful_batch`` step keeps each key's state
and emits the key's new result once per batch of values it receives, and the sink keeps the
latest result per key. Windowed aggregates emit each window once, when it closes. The event
clock has no system-time component: its watermark is the newest event time seen by the window
step *for that key* minus the watermark delay, and the end of input closes every window.

The clock covers ``run_main`` (one worker) or ``cluster_main`` (``workers`` threads in this
process): the dataflow reads every step, computes, writes every result item to the sink, and
returns at end of input, when the result is final.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from workloads import Inputs

Row = tuple[Any, ...]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIXED_NOW = datetime(2000, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Input: a replay of the steps, with barriers.


def _rows(batch: pa.RecordBatch) -> list[Row]:
    """The batch as row tuples, timestamps as aware UTC datetimes."""
    cols = []
    for col, f in zip(batch.columns, batch.schema, strict=True):
        if pa.types.is_timestamp(f.type):
            col = col.cast(pa.timestamp("ms", tz="UTC"))
        cols.append(col.to_pylist())
    return list(zip(*cols, strict=True))


class _Acks:
    """Rows the dataflow has finished with, counted by the sink (the join acknowledges rows)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n


class _Replay:
    """The steps' items in order; after a barrier step, nothing until every item sent is acknowledged."""

    def __init__(self, items: list[list[Any]], barriers: set[int], acks: _Acks) -> None:
        self.items = items
        self.barriers = barriers
        self.acks = acks
        self.next = 0
        self.sent = 0
        self.wait_for = -1

    def next_batch(self) -> list[Any]:
        if self.wait_for >= 0:
            if self.acks.count < self.wait_for:
                return []  # Bytewax polls again after 1 ms
            self.wait_for = -1
        if self.next >= len(self.items):
            raise StopIteration()
        batch = self.items[self.next]
        self.sent += len(batch)
        if self.next in self.barriers:
            self.wait_for = self.sent
        self.next += 1
        return batch


def _source(replay: _Replay) -> Any:
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    class Partition(StatefulSourcePartition[Any, None]):
        def next_batch(self) -> list[Any]:
            return replay.next_batch()

        def snapshot(self) -> None:
            return None

    class Source(FixedPartitionedSource[Any, None]):
        def list_parts(self) -> list[str]:
            return ["steps"]

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> Partition:
            return Partition()

    return Source()


# --------------------------------------------------------------------------------------------
# Output.


class _Collector:
    """What the sink received: every item (append-only results) or the latest value per key."""

    def __init__(self, keyed: bool) -> None:
        self.keyed = keyed
        self.lock = threading.Lock()
        self.items: list[Any] = []
        self.latest: dict[Any, Any] = {}

    def write(self, items: list[Any]) -> None:
        with self.lock:
            if self.keyed:
                self.latest.update(items)
            else:
                self.items.extend(items)


def _sink(write: Callable[[list[Any]], None]) -> Any:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class Partition(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            write(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Partition:
            return Partition()

    return Sink()


def _table(columns: list[str], rows: Iterable[Row]) -> pa.Table:
    rows = list(rows)
    return pa.table({c: pa.array([r[i] for r in rows]) for i, c in enumerate(columns)})


# --------------------------------------------------------------------------------------------
# Dataflow helpers.


def _batched(
    step_id: str, up: Any, init: Callable[[], Any], fn: Callable[[Any, list[Any]], list[Any]]
) -> Any:
    """``stateful_batch`` whose per-key state starts as ``init()``; ``fn(state, values)`` updates
    it in place and returns the items to emit for this batch of values."""
    import bytewax.operators as op
    from bytewax.operators import StatefulBatchLogic

    class Logic(StatefulBatchLogic[Any, Any, Any]):
        def __init__(self, state: Any) -> None:
            self.state = state

        def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
            return fn(self.state, values), StatefulBatchLogic.RETAIN

        def snapshot(self) -> Any:
            return self.state

    return op.stateful_batch(step_id, up, lambda resume: Logic(init() if resume is None else resume))


def _clock(inputs: Inputs, ts: Callable[[Any], datetime]) -> Any:
    """Event time from the item; watermark = newest event time of the key - the delay; no
    system-time advance (``now`` is constant), so only new items and the end of input close windows."""
    from bytewax.operators.windowing import EventClock

    return EventClock(
        ts_getter=ts,
        wait_for_system_duration=timedelta(milliseconds=inputs.watermark_delay_ms),
        now_getter=lambda: _FIXED_NOW,
        to_system_utc=lambda _t: None,
    )


class _Flow:
    """A workload's dataflow under construction: its source, the split of tagged inputs, its sink."""

    def __init__(self, inputs: Inputs, keyed_result: bool) -> None:
        import bytewax.operators as op
        from bytewax.dataflow import Dataflow

        self.inputs = inputs
        self.names = list(inputs.schemas)
        self.tagged = len(self.names) > 1
        self.col = {name: {c: i for i, c in enumerate(s.names)} for name, s in inputs.schemas.items()}
        items: list[list[Any]] = []
        for name, batch in inputs.steps:
            rows = _rows(batch)
            items.append([(name, r) for r in rows] if self.tagged else rows)
        self.split: dict[str, Any] = {}
        self.acks = _Acks()
        self.collector = _Collector(keyed_result)
        self.flow = Dataflow(inputs.workload)
        self.stream = op.input("steps", self.flow, _source(_Replay(items, set(inputs.barriers), self.acks)))

    def input(self, name: str) -> Any:
        """The stream of one input's rows."""
        import bytewax.operators as op

        if not self.tagged:
            return self.stream
        if not self.split:
            rest = self.stream
            for other in self.names[:-1]:
                b = op.branch(f"split_{other}", rest, lambda item, n=other: item[0] == n)
                self.split[other], rest = b.trues, b.falses
            self.split[self.names[-1]] = rest
            for other in self.names:
                self.split[other] = op.map(f"untag_{other}", self.split[other], lambda item: item[1])
        return self.split[name]

    def output(self, stream: Any, write: Callable[[list[Any]], None] | None = None) -> None:
        import bytewax.operators as op

        op.output("result", stream, _sink(write or self.collector.write))

    def run(self, workers: int) -> float:
        from bytewax.testing import cluster_main, run_main

        t = time.perf_counter()
        if workers == 1:
            run_main(self.flow)
        else:
            cluster_main(self.flow, [], 0, worker_count_per_proc=workers)
        return time.perf_counter() - t


# --------------------------------------------------------------------------------------------
# Workloads. Each builds its dataflow and returns a function that turns what the sink
# collected into the result table.


def _w1(f: _Flow) -> Callable[[], pa.Table]:
    import bytewax.operators as op

    c = f.col["trades"]
    sym, price = c["symbol"], c["price"]
    keyed = op.key_on("symbol", f.input("trades"), lambda r: r[sym])

    def update(acc: list[Any], rows: list[Row]) -> list[Any]:
        n, total, mx = acc
        for r in rows:
            p = r[price]
            n += 1
            total += p
            if mx is None or p > mx:
                mx = p
        acc[:] = n, total, mx
        return [(n, total / n, mx)]

    f.output(_batched("agg", keyed, lambda: [0, 0.0, None], update))
    return lambda: _table(["symbol", "n", "p", "m"], ((k, *v) for k, v in f.collector.latest.items()))


def _filter_project(f: _Flow) -> Callable[[], pa.Table]:
    import bytewax.operators as op

    c = f.col["trades"]
    i_id, i_sym, i_price, i_qty = c["id"], c["sym"], c["price"], c["qty"]

    def project(r: Row) -> Row | None:
        p = r[i_price]
        return (r[i_id], r[i_sym], p * r[i_qty], p * 1.1) if p > 100 else None

    f.output(op.filter_map("filter_project", f.input("trades"), project))
    return lambda: _table(["id", "sym", "notional", "marked"], f.collector.items)


def _groupby_1m(f: _Flow) -> Callable[[], pa.Table]:
    import bytewax.operators as op

    c = f.col["t"]
    i_k, i_v = c["k"], c["v"]
    keyed = op.key_on("k", f.input("t"), lambda r: str(r[i_k]))

    def update(acc: list[Any], rows: list[Row]) -> list[Any]:
        n, s = acc
        for r in rows:
            n += 1
            s += r[i_v]
        acc[:] = n, s
        return [(r[i_k], n, s)]

    f.output(_batched("agg", keyed, lambda: [0, 0.0], update))
    return lambda: _table(["k", "n", "s"], f.collector.latest.values())


def _join(f: _Flow) -> Callable[[], pa.Table]:
    """Upsert join. Orders are keyed by id first (the latest k per id; an order whose k changes
    is withdrawn from the old k), then customers and orders meet keyed by k, where the
    state is the customer's latest name and the latest amount of each order id of that k. Every
    batch there emits (rows acknowledged, changes) with changes ``(id, amount, name)`` (upsert)
    or ``(id, None, None)`` (delete); the sink applies them to the result, keyed by order id."""
    import bytewax.operators as op

    co, cc = f.col["orders"], f.col["customers"]
    o_id, o_k, o_amount = co["id"], co["k"], co["amount"]
    c_k, c_name = cc["k"], cc["name"]

    by_id = op.key_on("order_id", f.input("orders"), lambda r: str(r[o_id]))

    def upsert_orders(latest: dict[str, Any], rows: list[Row]) -> list[Any]:
        out: list[Any] = []
        for r in rows:
            old = latest.get("k")
            if old is not None and old != r[o_k]:
                out.append((str(old), ("drop", r[o_id], 0)))
            latest["k"] = r[o_k]
            out.append((str(r[o_k]), ("order", r[o_id], r[o_amount])))
        return out

    # (id, (k, msg)) -> (k, msg): re-keyed by the customer key
    orders = op.map("by_k", _batched("orders_latest", by_id, dict, upsert_orders), lambda kv: kv[1])
    customers = op.map(
        "customer_msg", f.input("customers"), lambda r: (str(r[c_k]), ("customer", r[c_name], 0))
    )
    merged = op.merge("meet", orders, customers)

    def join(state: list[Any], msgs: list[tuple[str, Any, Any]]) -> list[Any]:
        name, amounts = state
        acks = 0
        changes: list[Row] = []
        for kind, a, b in msgs:
            if kind == "customer":
                acks += 1
                name = a
                changes.extend((oid, amt, name) for oid, amt in amounts.items())
            elif kind == "order":
                acks += 1
                amounts[a] = b
                if name is not None:
                    changes.append((a, b, name))
            elif amounts.pop(a, None) is not None and name is not None:  # "drop": not acknowledged
                changes.append((a, None, None))
        state[0] = name
        return [(acks, changes)]

    joined = _batched("join", merged, lambda: [None, {}], join)

    result: dict[Any, tuple[Any, Any]] = {}
    lock = threading.Lock()

    def apply(items: list[tuple[str, tuple[int, list[Row]]]]) -> None:
        acks = 0
        with lock:
            for _k, (n, changes) in items:
                acks += n
                for oid, amount, name in changes:
                    if name is None:
                        result.pop(oid, None)
                    else:
                        result[oid] = (amount, name)
        f.acks.add(acks)

    f.output(joined, apply)
    return lambda: _table(["id", "amount", "name"], ((oid, *v) for oid, v in result.items()))


def _window(f: _Flow) -> Callable[[], pa.Table]:
    import bytewax.operators as op
    from bytewax.operators.windowing import TumblingWindower, fold_window

    c = f.col["ev"]
    i_k, i_v, i_ts = c["k"], c["v"], c["ts"]
    length = timedelta(minutes=1)
    keyed = op.key_on("k", f.input("ev"), lambda r: str(r[i_k]))

    def add(acc: tuple[int, float], r: Row) -> tuple[int, float]:
        return acc[0] + 1, acc[1] + r[i_v]

    out = fold_window(
        "tumble",
        keyed,
        _clock(f.inputs, lambda r: r[i_ts]),
        TumblingWindower(length=length, align_to=_EPOCH),
        builder=lambda: (0, 0.0),
        folder=add,
        merger=lambda a, b: (a[0] + b[0], a[1] + b[1]),
        ordered=False,
    )

    def row(kv: tuple[str, tuple[int, tuple[int, float]]]) -> Row:
        k, (wid, (n, s)) = kv
        start = _EPOCH + wid * length
        return (int(k), start, start + length, n, s)

    f.output(op.map("row", out.down, row))
    return lambda: _table(["k", "window_start", "window_end", "n", "s"], f.collector.items)


def _q0(f: _Flow) -> Callable[[], pa.Table]:
    # The bid rows are the output rows (same columns, same order): the dataflow passes them on.
    f.output(f.input("bid"))
    return lambda: _table(
        ["auction", "bidder", "price", "channel", "url", "date_time", "extra"], f.collector.items
    )


def _q1(f: _Flow) -> Callable[[], pa.Table]:
    import bytewax.operators as op

    c = f.col["bid"]
    ia, ib, ip, idt, ie = c["auction"], c["bidder"], c["price"], c["date_time"], c["extra"]
    f.output(op.map("convert", f.input("bid"), lambda r: (r[ia], r[ib], r[ip] * 0.908, r[idt], r[ie])))
    return lambda: _table(["auction", "bidder", "price", "date_time", "extra"], f.collector.items)


def _q2(f: _Flow) -> Callable[[], pa.Table]:
    import bytewax.operators as op

    c = f.col["bid"]
    ia, ip = c["auction"], c["price"]
    f.output(op.filter_map("select", f.input("bid"), lambda r: (r[ia], r[ip]) if r[ia] % 123 == 0 else None))
    return lambda: _table(["auction", "price"], f.collector.items)


def _q3(f: _Flow) -> Callable[[], pa.Table]:
    """Incremental inner join of two append-only streams keyed by person id = seller: the state
    keeps both sides' rows of the key; each new row is joined with the other side's rows."""
    import bytewax.operators as op

    cp, ca = f.col["person"], f.col["auction"]
    p_id, p_name, p_city, p_state = cp["id"], cp["name"], cp["city"], cp["state"]
    a_id, a_seller, a_cat = ca["id"], ca["seller"], ca["category"]
    states = ("OR", "ID", "CA")
    persons = op.filter_map(
        "persons",
        f.input("person"),
        lambda r: (str(r[p_id]), ("p", (r[p_name], r[p_city], r[p_state]))) if r[p_state] in states else None,
    )
    auctions = op.filter_map(
        "auctions",
        f.input("auction"),
        lambda r: (str(r[a_seller]), ("a", r[a_id])) if r[a_cat] == 10 else None,
    )

    def join(state: list[list[Any]], msgs: list[tuple[str, Any]]) -> list[Row]:
        ps, auc = state
        out: list[Row] = []
        for side, v in msgs:
            if side == "p":
                ps.append(v)
                out.extend((*v, aid) for aid in auc)
            else:
                auc.append(v)
                out.extend((*p, v) for p in ps)
        return out

    f.output(op.key_rm("rows", _batched("join", op.merge("meet", persons, auctions), lambda: [[], []], join)))
    return lambda: _table(["name", "city", "state", "id"], f.collector.items)


def _q4(f: _Flow) -> Callable[[], pa.Table]:
    """Keyed by auction id: the auction (when seen) and the highest bid within [date_time, expires]
    (bids that arrive before their auction wait for it); every change of an auction's highest bid
    goes, keyed by category, to a per-category average over the auctions' current highest bids."""
    import bytewax.operators as op

    ca, cb = f.col["auction"], f.col["bid"]
    a_id, a_dt, a_exp, a_cat = ca["id"], ca["date_time"], ca["expires"], ca["category"]
    b_auction, b_price, b_dt = cb["auction"], cb["price"], cb["date_time"]
    auctions = op.map(
        "auctions", f.input("auction"), lambda r: (str(r[a_id]), ("a", (r[a_dt], r[a_exp], r[a_cat])))
    )
    bids = op.map("bids", f.input("bid"), lambda r: (str(r[b_auction]), ("b", (r[b_dt], r[b_price]))))

    def closing(state: list[Any], msgs: list[tuple[str, Any]]) -> list[Any]:
        auction, best, pending = state
        before = best
        for side, v in msgs:
            if side == "a":
                auction = v
                for at, price in pending:
                    if auction[0] <= at <= auction[1] and (best is None or price > best):
                        best = price
                pending = []
            elif auction is None:
                pending.append(v)
            elif auction[0] <= v[0] <= auction[1] and (best is None or v[1] > best):
                best = v[1]
        state[:] = auction, best, pending
        return [] if best is None or best == before else [(auction[2], best)]

    finals = _batched("closing", op.merge("meet", auctions, bids), lambda: [None, None, []], closing)
    by_cat = op.key_on(
        "category",
        op.map("with_auction", finals, lambda kv: (kv[0], kv[1][0], kv[1][1])),
        lambda t: str(t[1]),
    )

    def average(state: list[Any], msgs: list[tuple[str, int, int]]) -> list[Row]:
        finals_by_auction, total = state
        cat = msgs[0][1]
        for auction, _cat, final in msgs:
            total += final - finals_by_auction.get(auction, 0)
            finals_by_auction[auction] = final
        state[1] = total
        return [(cat, total / len(finals_by_auction))]

    f.output(_batched("avg", by_cat, lambda: [{}, 0], average))
    return lambda: _table(["category", "avg_final"], f.collector.latest.values())


def _q5(f: _Flow) -> Callable[[], pa.Table]:
    """Bid counts per auction in 10-second windows sliding by 2 seconds (``fold_window``), then,
    keyed by window, the auctions with the highest count (updated as counts arrive)."""
    import bytewax.operators as op
    from bytewax.operators.windowing import SlidingWindower, fold_window

    c = f.col["bid"]
    i_a, i_dt = c["auction"], c["date_time"]
    length, hop = timedelta(seconds=10), timedelta(seconds=2)
    keyed = op.key_on("auction", f.input("bid"), lambda r: str(r[i_a]))
    counts = fold_window(
        "hop",
        keyed,
        _clock(f.inputs, lambda r: r[i_dt]),
        SlidingWindower(length=length, offset=hop, align_to=_EPOCH),
        builder=lambda: 0,
        folder=lambda n, _r: n + 1,
        merger=lambda a, b: a + b,
        ordered=False,
    )
    by_window = op.key_on(
        "window",
        op.map("count", counts.down, lambda kv: (int(kv[0]), kv[1][0], kv[1][1])),
        lambda t: str(t[1]),
    )

    def top(state: list[Any], msgs: list[tuple[int, int, int]]) -> list[Any]:
        best, auctions = state
        for auction, _wid, num in msgs:
            if num > best:
                best, auctions = num, [auction]
            elif num == best:
                auctions.append(auction)
        state[:] = best, auctions
        start = _EPOCH + msgs[0][1] * hop
        return [[(start, start + length, a, best) for a in auctions]]

    f.output(_batched("top", by_window, lambda: [0, []], top))
    return lambda: _table(
        ["window_start", "window_end", "auction", "num"],
        (r for rows in f.collector.latest.values() for r in rows),
    )


def _q7(f: _Flow) -> Callable[[], pa.Table]:
    """One tumbling 10-second ``fold_window`` over all bids whose accumulator is the highest price
    and the bids carrying it (the bids the SQL joins back to the window's maximum)."""
    import bytewax.operators as op
    from bytewax.operators.windowing import TumblingWindower, fold_window

    c = f.col["bid"]
    ia, ip, ib, idt = c["auction"], c["price"], c["bidder"], c["date_time"]
    keyed = op.key_on("all", f.input("bid"), lambda _r: "all")

    def fold(acc: tuple[int, list[Row]], r: Row) -> tuple[int, list[Row]]:
        best, rows = acc
        p = r[ip]
        if p > best:
            return p, [(r[ia], p, r[ib], r[idt])]
        if p == best:
            rows.append((r[ia], p, r[ib], r[idt]))
        return acc

    def merge(a: tuple[int, list[Row]], b: tuple[int, list[Row]]) -> tuple[int, list[Row]]:
        if a[0] != b[0]:
            return a if a[0] > b[0] else b
        return a[0], a[1] + b[1]

    top = fold_window(
        "tumble",
        keyed,
        _clock(f.inputs, lambda r: r[idt]),
        TumblingWindower(length=timedelta(seconds=10), align_to=_EPOCH),
        builder=lambda: (-1, []),
        folder=fold,
        merger=merge,
        ordered=False,
    )
    f.output(op.flat_map("bids", top.down, lambda kv: kv[1][1][1]))
    return lambda: _table(["auction", "price", "bidder", "date_time"], f.collector.items)


def _q8(f: _Flow) -> Callable[[], pa.Table]:
    """Persons keyed by id and auctions keyed by seller, merged, in one tumbling 10-second
    ``fold_window`` per key: the accumulator holds the window's distinct person names and whether
    the key sold something in it; a closed window with both emits (id, name, window_start)."""
    import bytewax.operators as op
    from bytewax.operators.windowing import TumblingWindower, fold_window

    cp, ca = f.col["person"], f.col["auction"]
    p_id, p_name, p_dt = cp["id"], cp["name"], cp["date_time"]
    a_seller, a_dt = ca["seller"], ca["date_time"]
    length = timedelta(seconds=10)
    persons = op.map("persons", f.input("person"), lambda r: (str(r[p_id]), (r[p_dt], r[p_name])))
    sellers = op.map("sellers", f.input("auction"), lambda r: (str(r[a_seller]), (r[a_dt], None)))

    def fold(acc: tuple[set[str], bool], v: tuple[datetime, str | None]) -> tuple[set[str], bool]:
        if v[1] is None:
            return acc[0], True
        acc[0].add(v[1])
        return acc

    out = fold_window(
        "tumble",
        op.merge("meet", persons, sellers),
        _clock(f.inputs, lambda v: v[0]),
        TumblingWindower(length=length, align_to=_EPOCH),
        builder=lambda: (set(), False),
        folder=fold,
        merger=lambda a, b: (a[0] | b[0], a[1] or b[1]),
        ordered=False,
    )

    def rows(kv: tuple[str, tuple[int, tuple[set[str], bool]]]) -> list[Row]:
        k, (wid, (names, sold)) = kv
        return [(int(k), name, _EPOCH + wid * length) for name in names] if sold else []

    f.output(op.flat_map("rows", out.down, rows))
    return lambda: _table(["id", "name", "window_start"], f.collector.items)


_QUERIES: dict[str, tuple[Callable[[_Flow], Callable[[], pa.Table]], bool]] = {
    # workload -> (dataflow builder, whether the sink keeps the latest value per key)
    "w1": (_w1, True),
    "filter_project": (_filter_project, False),
    "groupby_1m": (_groupby_1m, True),
    "join": (_join, False),
    "window": (_window, False),
    "q0": (_q0, False),
    "q1": (_q1, False),
    "q2": (_q2, False),
    "q3": (_q3, False),
    "q4": (_q4, True),
    "q5": (_q5, True),
    "q7": (_q7, False),
    "q8": (_q8, False),
}


def run(inputs: Inputs, workers: int = 1) -> tuple[float, pa.Table]:
    build, keyed = _QUERIES[inputs.workload]
    flow = _Flow(inputs, keyed)
    result = build(flow)
    seconds = flow.run(workers)
    return seconds, result()

"""One process of a LaminarDB cluster, driven by `test_cluster.py` over stdin/stdout.

    python cluster_node.py SCENARIO PROCESS ADDRESSES WORKERS [DIRECTORY PHASE]

ADDRESSES is a comma-separated list of host:port (empty: run alone, feeding every row). The
process runs the scenario's statements, starts the pipeline, feeds its own part of the rows
(PHASE "first": the first half of its steps; "resume": reopen DIRECTORY and feed the second
half), passes a barrier with the other processes and prints ``fed``; on ``collect`` it prints
the scenario's result as one JSON line; on ``state`` the pipeline state; on ``checkpoint`` process 0 takes a checkpoint of the
cluster and prints its epoch; on ``lose`` it feeds rows that are not checkpointed; on ``stop``
it shuts down and prints ``stopped`` (or the error).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from typing import Any, Callable

import laminardb

STATEMENTS: dict[str, list[str]] = {
    "aggregate": [
        "CREATE SOURCE events (k BIGINT, v BIGINT)",
        "CREATE MATERIALIZED VIEW totals AS SELECT k, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi "
        "FROM events GROUP BY k",
    ],
    "join": [
        "CREATE SOURCE customers (id BIGINT, region VARCHAR, PRIMARY KEY (id))",
        "CREATE SOURCE orders (oid BIGINT, cust BIGINT, amount BIGINT, PRIMARY KEY (oid))",
        "CREATE MATERIALIZED VIEW joined AS SELECT o.oid, o.amount, c.region "
        "FROM orders o JOIN customers c ON o.cust = c.id",
        "CREATE MATERIALIZED VIEW per_region AS SELECT region, COUNT(*) AS n, SUM(amount) AS total "
        "FROM joined GROUP BY region",
    ],
    "window": [
        "CREATE SOURCE ticks (sym VARCHAR, ts TIMESTAMP, px BIGINT, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)",
        "CREATE STREAM bars AS SELECT sym, window_start, window_end, COUNT(*) AS n, MAX(px) AS hi "
        "FROM ticks GROUP BY sym, TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE",
    ],
}

if "LAMINAR_SINK_DIR" in os.environ:
    # Generated rows (every process generates its share) through a filter into files every
    # process writes, published at the cluster's checkpoints (the test reads the directory).
    STATEMENTS["sink"] = [
        "CREATE SOURCE events (k BIGINT, v BIGINT) WITH (connector = 'datagen', rows_per_second = '3000', "
        "max_rows = '6000', seed = '7', 'fields.k.kind' = 'sequence', 'fields.v.min' = '0', "
        "'fields.v.max' = '999')",
        "CREATE SINK picked AS SELECT k, v, v * 2 AS w FROM events WHERE v % 3 = 0 "
        f"WITH (connector = 'file', path = '{os.environ['LAMINAR_SINK_DIR']}', format = 'json', "
        "'delivery.guarantee' = 'exactly-once')",
        # An updating query: its changelog is written by process 0 alone, from the whole result.
        "CREATE SINK buckets AS SELECT v % 10 AS b, COUNT(*) AS n FROM events GROUP BY v % 10 "
        f"WITH (connector = 'file', path = '{os.environ['LAMINAR_SINK_DIR']}/buckets', format = 'json', "
        "changelog = 'true', 'delivery.guarantee' = 'exactly-once')",
    ]

RESULTS: dict[str, str] = {
    "aggregate": "SELECT * FROM totals ORDER BY k",
    "join": "SELECT * FROM per_region ORDER BY region",
    "window": "SELECT sym, CAST(window_start AS VARCHAR) AS ws, n, hi FROM bars ORDER BY sym, ws",
}

BASE = dt.datetime(2026, 1, 1)


Step = Callable[[laminardb.Connection], None]


def insert(source: str, rows: list[dict[str, Any]]) -> Step:
    return lambda db: db.insert(source, rows)


def chunks(source: str, rows: list[dict[str, Any]], size: int) -> list[Step]:
    return [insert(source, rows[i : i + size]) for i in range(0, len(rows), size)]


def steps_aggregate(mine: Callable[[int], bool]) -> list[Step]:
    rows = [{"k": i % 37, "v": (i * 7919) % 1000} for i in range(6000) if mine(i)]
    return chunks("events", rows, 500)


def steps_join(mine: Callable[[int], bool]) -> list[Step]:
    # A key's rows all go through one process, as a keyed partition would: its updates replace it.
    customers = [{"id": c, "region": f"r{c % 5}"} for c in range(200) if mine(c)]
    orders = [{"oid": o, "cust": (o * 13) % 250, "amount": o % 97} for o in range(3000) if mine(o)]
    # Updates on both sides: customers move region, orders change customer and amount.
    moved = [{"id": c, "region": f"r{(c * 3) % 7}"} for c in range(0, 200, 3) if mine(c)]
    changed = [{"oid": o, "cust": o % 200, "amount": 1000 + o} for o in range(0, 3000, 11) if mine(o)]
    return [
        insert("customers", customers),
        *chunks("orders", orders, 400),
        lambda db: db.flush(),
        insert("customers", moved),
        *chunks("orders", changed, 100),
    ]


def steps_window(mine: Callable[[int], bool]) -> list[Step]:
    # Each process's rows in event-time order; the cluster's watermark is the slowest process's.
    rows = [
        {"sym": f"s{i % 4}", "ts": BASE + dt.timedelta(seconds=i), "px": (i * 31) % 500}
        for i in range(3600)
        if mine(i)
    ]

    def close_all(db: laminardb.Connection) -> None:
        # Past the last window: every window closes.
        with db.writer("ticks") as w:
            w.watermark(BASE + dt.timedelta(hours=2))

    return [*chunks("ticks", rows, 300), close_all]


def steps_sink() -> list[Step]:
    def generated(db: laminardb.Connection) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = db.source_metrics("events")
            if m is not None and m.connector_state == "finished":
                return
            time.sleep(0.05)
        raise TimeoutError("the generator did not finish")

    # Part of the rows (then a checkpoint, in a crash run), then the rest.
    return [lambda db: time.sleep(0.6), generated]


STEPS: dict[str, Callable[[Callable[[int], bool]], list[Step]]] = {
    "aggregate": steps_aggregate,
    "sink": lambda mine: steps_sink(),
    "join": steps_join,
    "window": steps_window,
}


def main() -> None:
    scenario, process, addresses, workers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    # PHASE: "all" feeds every step; "first" feeds the first half and then takes commands to
    # checkpoint and to feed steps that a crash loses; "resume" restarts from the directory's
    # checkpoint and feeds the second half.
    directory = sys.argv[5] if len(sys.argv) > 5 else ":memory:"
    phase = sys.argv[6] if len(sys.argv) > 6 else "all"
    hosts = [a for a in addresses.split(",") if a]
    # The exactly-once sink needs checkpoints: the test takes them (the interval is a formality).
    interval = 3_600_000 if scenario == "sink" else None
    if hosts:
        config = laminardb.LaminarConfig(
            workers=workers, processes=hosts, process_index=process, checkpoint_interval_ms=interval
        )
        count = len(hosts)
    else:
        config = laminardb.LaminarConfig(workers=workers, checkpoint_interval_ms=interval)
        count = 1
    db = laminardb.open(directory, config=config)
    if phase != "resume":
        for sql in STATEMENTS[scenario]:
            db.execute(sql)
    db.start()
    steps = STEPS[scenario](lambda i: i % count == process)
    half = len(steps) // 2
    todo = {"all": steps, "first": steps[:half], "resume": steps[half:]}[phase]
    for step in todo:
        step(db)
    # Every process's rows are in process 0's results once all passed the barrier.
    db.barrier()
    print("fed", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "collect":
            if scenario == "sink":
                # What the sink has written is published by a checkpoint; the test reads it.
                if process == 0:
                    db.checkpoint()
                print("[]", flush=True)
                continue
            rows: list[dict[str, Any]] = db.query(RESULTS[scenario]).to_dicts()
            print(json.dumps(rows, default=str), flush=True)
        elif command == "checkpoint":
            # Process 0 takes the cluster's checkpoint; the others take part in the background.
            try:
                print(db.checkpoint().checkpoint_id if process == 0 else 0, flush=True)
            except laminardb.LaminarError as e:
                print(f"error: {e}", flush=True)
        elif command == "lose":
            # Rows after the checkpoint, which the crash that follows loses.
            steps[half](db)
            db.flush()
            print("fed", flush=True)
        elif command == "state":
            print(db.pipeline_state, flush=True)
        elif command == "stop":
            try:
                db.shutdown()
            except laminardb.LaminarError as e:
                print(f"error: {e}", flush=True)
                return
            db.close()
            print("stopped", flush=True)
            return


if __name__ == "__main__":
    main()

"""A streaming join and a tumbling-window aggregate, one engine and one workload per run.

Usage: ``python join_window.py ENGINE WORKLOAD N``. ENGINE is ``laminardb``: whatever package
``import laminardb`` resolves to in the running interpreter (this package, or the upstream
``laminardb`` 0.17.0 from PyPI in its own virtualenv); its ``__version__`` and location go to
stderr. Prints one line: ``ENGINE WORKLOAD rows_per_second peak_rss_mb`` where rows/s = N / time
from the first insert until the engine has processed every row, and peak RSS is the whole
process's (``ru_maxrss``), input data included. All input is built as pyarrow RecordBatches
before the clock starts, and each run checks the engine's final result before printing.

The two engines differ, so the script probes features (never the version) and the docstring
below says exactly what each engine computes.

join
----
Sources ``customers(k BIGINT, name VARCHAR)`` (100,000 keys) and ``orders(id BIGINT, k BIGINT,
amount DOUBLE)`` (N rows), continuous queries::

    CREATE STREAM joined AS SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON o.k = c.k
    CREATE STREAM joined_total AS SELECT COUNT(*) AS n, SUM(amount) AS amt FROM joined

Input, identical for both engines: R = max(2, round(N / 100,000)) rounds. Round r sends ONE
customers batch, then ONE orders batch:

- customers: the keys of slice r (100,000 / R new keys, name ``c<k>``), plus a re-send with a
  new name (``c<k>u<r>``) of every key whose orders are updated in this round;
- orders: 0.9 N / R new orders (new ids, keys cycling over slice r, amount = id % 997), and in
  rounds 1.. also 0.1 N / (R - 1) re-sends of earlier order ids (same id and key, amount + 1000).
  So 10% of the N order rows are updates; each order id is updated at most once, each customer
  key at most once (about 11,000 customer updates in all).

After each round the driver waits until the engine has processed it (``db.flush()`` where it
exists, else until ``joined_total`` reports the round's count), and only then sends the next;
the clock includes these waits. The barrier is there for upstream (below); both engines get it.
On upstream each round then costs one ~100 ms pipeline cycle, which bounds its rate at about
100,000 order rows per ~0.1 s whatever the join costs.

- An engine that accepts ``PRIMARY KEY (col)`` in CREATE SOURCE (this package) gets upsert
  sources: a re-sent id/key replaces the row, the join retracts and re-inserts exactly the
  affected pairs (a customer update re-emits every order of that key with the new name). Final
  result: one row per distinct order id (0.9 N rows) with its latest amount and its customer's
  latest name; checked: n = 0.9 N, amt = sum of latest amounts.
- upstream 0.17 rejects ``PRIMARY KEY (k)`` (it parses only the column form ``k BIGINT PRIMARY
  KEY``, which changes nothing), so its sources are append-only: an update is just another row.
  Worse, its two-source JOIN keeps no state: whenever both inputs have unconsumed rows in the
  same ~100 ms cycle it joins those rows with each other and discards them (a row that arrives
  in a cycle where the other side has nothing new waits for the other side's next rows, then
  only sees those). Interval bounds in ON, ASOF JOIN and joins against a CREATE TABLE (which
  never emits) behave no better. The round structure makes that micro-batch join exact: every
  order in round r finds its key's customer row (exactly one) in round r's customers batch, and
  the barrier keeps rounds from sharing a cycle (without it, re-sent customers also meet earlier
  rounds' orders: 1,200,035 rows instead of 1,000,000 at N = 1M). So upstream emits every
  order row exactly once, joined with the customer row of its own round (an updated order
  carries the updated name); ``joined_total`` counts emitted rows. Checked: n = N, amt = sum of
  all amounts sent. Upstream does no retraction work; earlier output is never corrected.

rows/s counts the N order rows (the 100,000 + ~10,000 customer rows come on top).

window
------
Source ``ev(k BIGINT, v DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)``,
N rows in batches of 50,000: k = i % 100, v = i % 1000, ts = 2024-01-01 + i ms (increasing, so
10M rows span ~2.8 h of event time, ~167 windows x 100 keys). Continuous query::

    SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s
    FROM ev GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)

with the default (updating) emission: the result holds every (k, window), closed or open.
Checked: SUM(n) = N, SUM(s) = sum of v, and the number of (k, window) groups.

- Spelling: upstream 0.17 accepts the query above at CREATE but its stream then never emits
  (no ``window_start``/``window_end`` columns); there TUMBLE is a scalar function returning the
  window start, so it runs ``TUMBLE(ts, I) AS window_start, TUMBLE(ts, I) + I AS window_end``.
  Probe: does plain ``SELECT TUMBLE(ts, …) FROM ev`` run as an ad-hoc query? (Not in this
  package, where TUMBLE exists only as a GROUP BY item; if CREATE rejects the scalar spelling,
  the script falls back to the query above.)
- Watermark delay: upstream drops every row older than (newest event time of the same insert
  batch - delay); with ``INTERVAL '1' SECOND`` it would count only the last 1,001 rows of each
  batch. The 1-minute delay exceeds a batch's 50 s span, so no row is late on either engine.
- Event-time values are sent as ``timestamp[ms]``: upstream's windows emit nothing for
  ``timestamp[us]`` arrays; this package casts them to its TIMESTAMP (microseconds).

Completion: where ``db.flush()`` exists (this package) the clock stops when it returns, then
``SELECT`` over the stream checks the result. Upstream has no flush and cannot query a stream,
so the driver subscribes to it before the first insert; upstream re-emits the whole current
result every cycle (possibly split over several batches), and the clock stops when the latest
row of every group adds up to the expected total.
"""

import random
import resource
import sys
import time

import pyarrow as pa

CUSTOMERS = 100_000
ROUND_ROWS = 100_000
WINDOW_BATCH = 50_000
WINDOW_KEYS = 100
T0_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z, on a minute boundary
WAIT_S = 120  # give up when the engine shows no progress for this long


def build_join(n):
    """Rounds of (customers batch, orders batch) plus the expected results (see the docstring)."""
    rounds = max(2, round(n / ROUND_ROWS))
    updates = n // 10
    new_total = n - updates
    new_base = [new_total * r // rounds for r in range(rounds + 1)]
    upd_quota = [0] + [updates * r // (rounds - 1) - updates * (r - 1) // (rounds - 1) for r in range(1, rounds)]
    slice_base = [CUSTOMERS * r // rounds for r in range(rounds + 1)]
    rng = random.Random(7)
    pool = []  # (key, its slice) of earlier slices whose orders were never updated, shuffled
    out, sent_per_round = [], []
    sum_new = sum_upd = 0.0
    n_upd = 0
    for r in range(rounds):
        s0, slen = slice_base[r], slice_base[r + 1] - slice_base[r]
        b0, nb = new_base[r], new_base[r + 1] - new_base[r]
        ids = list(range(b0, b0 + nb))
        keys = [s0 + i % slen for i in range(nb)]
        amounts = [float(i % 997) for i in ids]
        sum_new += sum(amounts)
        ckeys = list(range(s0, s0 + slen))
        names = [f"c{k}" for k in ckeys]
        need, got = upd_quota[r], 0
        while got < need and pool:
            k, j = pool.pop()
            ckeys.append(k)
            names.append(f"c{k}u{r}")
            js0, jslen, jb0 = slice_base[j], slice_base[j + 1] - slice_base[j], new_base[j]
            oid = jb0 + (k - js0)
            while oid < new_base[j + 1] and got < need:
                ids.append(oid)
                keys.append(k)
                amounts.append(float(oid % 997) + 1000.0)
                sum_upd += float(oid % 997)
                got += 1
                oid += jslen
        n_upd += got
        fresh = [(k, r) for k in range(s0, s0 + slen)]
        rng.shuffle(fresh)
        pool = fresh + pool  # older slices stay at the end and are used first
        customers = pa.record_batch(
            [pa.array(ckeys, pa.int64()), pa.array(names, pa.string())], names=["k", "name"]
        )
        orders = pa.record_batch(
            [pa.array(ids, pa.int64()), pa.array(keys, pa.int64()), pa.array(amounts, pa.float64())],
            names=["id", "k", "amount"],
        )
        out.append((customers, orders))
        sent_per_round.append(len(ids))
    rows = new_total + n_upd
    expect = {
        # upsert sources: one row per order id, latest amounts (each id updated at most once)
        "upsert": (new_total, sum_new + 1000.0 * n_upd),
        # append-only micro-batch join: every order row once
        "append": (rows, sum_new + sum_upd + 1000.0 * n_upd),
    }
    return out, sent_per_round, rows, expect


def build_window(n):
    k = pa.array([i % WINDOW_KEYS for i in range(WINDOW_BATCH)], pa.int64())
    v = pa.array([float(i % 1000) for i in range(WINDOW_BATCH)], pa.float64())  # batches start at multiples of 1000
    out = []
    for s in range(0, n, WINDOW_BATCH):
        m = min(WINDOW_BATCH, n - s)
        ts = pa.array(range(T0_MS + s, T0_MS + s + m), pa.timestamp("ms"))
        out.append(pa.record_batch([k.slice(0, m), v.slice(0, m), ts], names=["k", "v", "ts"]))
    full, rest = divmod(n, 1000)
    sum_v = full * 499_500.0 + rest * (rest - 1) / 2
    groups = sum(min(WINDOW_KEYS, min(n, s + 60_000) - s) for s in range(0, n, 60_000))
    return out, (n, sum_v, groups)


def next_table(lm, sub, timeout_ms):
    """The next subscription batch as a pyarrow Table, or None on timeout (upstream's stub says it
    returns None; both packages raise SubscriptionError in practice)."""
    try:
        r = sub.next_timeout(timeout_ms)
    except lm.SubscriptionError:
        return None
    return None if r is None else r.to_arrow()


def scalar(db, sql):
    return db.query(sql).to_arrow().to_pylist()[0]


def run_join(lm, db, n):
    rounds, sent, rows, expect = build_join(n)
    # Probe: upsert sources. This package takes a PRIMARY KEY table constraint; upstream 0.17
    # rejects it with a parse error, and its sources are append-only.
    try:
        db.execute("CREATE SOURCE customers (k BIGINT, name VARCHAR, PRIMARY KEY (k))")
        db.execute("CREATE SOURCE orders (id BIGINT, k BIGINT, amount DOUBLE, PRIMARY KEY (id))")
        mode = "upsert"
    except lm.LaminarError:
        db.execute("CREATE SOURCE customers (k BIGINT, name VARCHAR)")
        db.execute("CREATE SOURCE orders (id BIGINT, k BIGINT, amount DOUBLE)")
        mode = "append"
    db.execute("CREATE STREAM joined AS SELECT o.id, o.amount, c.name FROM orders o JOIN customers c ON o.k = c.k")
    db.execute("CREATE STREAM joined_total AS SELECT COUNT(*) AS n, SUM(amount) AS amt FROM joined")
    db.start()
    # Probe: flush() (this package) tells when everything inserted is processed; upstream has
    # none, so watch the running count instead (subscribed before the first insert).
    flush = getattr(db, "flush", None)
    sub = None if flush else db.subscribe_stream("joined_total")
    want_n, want_amt = expect[mode]
    print(f"join: {len(rounds)} rounds, {rows} order rows, {mode} sources", file=sys.stderr)
    n_seen, amt_seen, cum = 0, 0.0, 0
    t = time.perf_counter()
    for (customers, orders), count in zip(rounds, sent):
        db.insert("customers", customers)
        db.insert("orders", orders)
        cum += count
        if flush:
            flush()
            continue
        idle = time.perf_counter()
        while n_seen < cum:
            b = next_table(lm, sub, 1000)
            if b is None:
                if time.perf_counter() - idle > WAIT_S:
                    sys.exit(f"join: stuck at n={n_seen}, expected {cum} after this round")
                continue
            if b.num_rows:
                n_seen, amt_seen = b.column("n")[-1].as_py(), b.column("amt")[-1].as_py()
                idle = time.perf_counter()
    dt = time.perf_counter() - t
    if flush:
        got = scalar(db, "SELECT n, amt FROM joined_total")
        n_seen, amt_seen = got["n"], got["amt"]
    if (n_seen, amt_seen) != (want_n, want_amt):
        sys.exit(f"join: wrong result n={n_seen} amt={amt_seen}, expected n={want_n} amt={want_amt}")
    db.shutdown()
    return rows, dt


def run_window(lm, db, n):
    data, (want_n, want_s, want_groups) = build_window(n)
    db.execute("CREATE SOURCE ev (k BIGINT, v DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)")
    window = "TUMBLE(ts, INTERVAL '1' MINUTE)"
    standard = (
        f"SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s FROM ev GROUP BY k, {window}"
    )
    # Probe: is TUMBLE a scalar function (upstream 0.17: it returns the window start, and the
    # standard query above is accepted but never emits)? Then spell the window columns with it.
    try:
        db.query(f"SELECT {window} AS w FROM ev LIMIT 0")
        scalar_tumble = True
    except Exception:  # this package: QueryError, TUMBLE is not a function outside GROUP BY
        scalar_tumble = False
    sql = standard
    if scalar_tumble:
        sql = (
            f"SELECT k, {window} AS window_start, {window} + INTERVAL '1' MINUTE AS window_end, "
            f"COUNT(*) AS n, SUM(v) AS s FROM ev GROUP BY k, {window}"
        )
    try:
        db.execute(f"CREATE STREAM w AS {sql}")
    except lm.LaminarError:
        if sql == standard:
            raise
        db.execute(f"CREATE STREAM w AS {standard}")
    db.start()
    flush = getattr(db, "flush", None)  # see run_join
    sub = None if flush else db.subscribe_stream("w")
    latest = {}  # (k, window_start) -> (n, s): the engine re-emits groups, keep the last
    t = time.perf_counter()
    for b in data:
        db.insert("ev", b)
    if flush:
        flush()
    else:
        total, idle = 0, time.perf_counter()
        while total != want_n:
            b = next_table(lm, sub, 1000)
            if b is None:
                if time.perf_counter() - idle > WAIT_S:
                    sys.exit(f"window: stuck at SUM(n)={total}, expected {want_n}")
                continue
            keys = zip(b.column("k").to_pylist(), b.column("window_start").cast(pa.int64()).to_pylist())
            latest.update(zip(keys, zip(b.column("n").to_pylist(), b.column("s").to_pylist())))
            total = sum(v[0] for v in latest.values())
            idle = time.perf_counter()
    dt = time.perf_counter() - t
    if flush:
        got = scalar(db, "SELECT COUNT(*) AS g, SUM(n) AS n, SUM(s) AS s FROM w")
    else:
        got = {"g": len(latest), "n": total, "s": sum(v[1] for v in latest.values())}
    if (got["g"], got["n"], got["s"]) != (want_groups, want_n, want_s):
        sys.exit(f"window: wrong result {got}, expected g={want_groups} n={want_n} s={want_s}")
    db.shutdown()
    return n, dt


def main():
    if len(sys.argv) != 4 or sys.argv[1] != "laminardb" or sys.argv[2] not in ("join", "window"):
        sys.exit(__doc__.split("\n\n")[1])
    engine, workload, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import laminardb as lm

    print(f"laminardb {lm.__version__} from {lm.__file__}", file=sys.stderr)
    db = lm.open(":memory:")
    rows, dt = (run_join if workload == "join" else run_window)(lm, db, n)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{engine} {workload} {rows / dt:.0f} {rss_mb:.0f}")


if __name__ == "__main__":
    main()

"""JSON over Kafka → GROUP BY → Kafka, one engine per call, on a topic filled beforehand.

    kafka_groupby.py produce BOOTSTRAP TOPIC N      fill TOPIC (4 partitions) with N JSON trades
    kafka_groupby.py laminardb BOOTSTRAP IN OUT N   this package: Kafka source → aggregate → Kafka sink
    kafka_groupby.py pathway BOOTSTRAP IN OUT N     Pathway's Kafka connector, same query
    kafka_groupby.py verify BOOTSTRAP OUT N         the latest row per key in OUT adds up to N (exit 1 if not)

An engine prints `RESULT <engine> <messages/s> <seconds> <peak RSS MB>`: the time from starting the
pipeline until every message was read and the aggregate written to OUT (flushed).
"""

import json
import resource
import sys
import time
import uuid

KEYS = 100


def rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def produce(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1_000_000})
    for i in range(n):
        v = json.dumps({"sym": f"S{i % KEYS}", "px": 100.0 + (i % 1000) / 10.0, "qty": 1 + i % 10}).encode()
        while True:
            try:
                p.produce(topic, value=v, partition=i % 4)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0


def create_out(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()


def run_laminardb(bootstrap: str, src: str, out: str, n: int) -> None:
    import laminardb

    db = laminardb.open(":memory:")
    db.execute(f"""CREATE SOURCE trades (sym VARCHAR, px DOUBLE, qty BIGINT) WITH (connector = 'kafka',
        'bootstrap.servers' = '{bootstrap}', 'topic' = '{src}', 'group.id' = 'bench-{uuid.uuid4().hex}',
        'auto.offset.reset' = 'earliest')""")
    db.execute(f"""CREATE SINK agg AS SELECT sym, COUNT(*) AS n, SUM(qty) AS q, AVG(px) AS p FROM trades
        GROUP BY sym WITH (connector = 'kafka', 'bootstrap.servers' = '{bootstrap}', 'topic' = '{out}',
        'partitioner' = 'key-hash')""")
    t = time.perf_counter()
    db.start()
    while db.source_metrics("trades").total_events < n:
        time.sleep(0.002)
    db.flush()
    db.shutdown()  # the sink's last epoch is acknowledged by the broker before this returns
    dt = time.perf_counter() - t
    db.close()
    print(f"RESULT laminardb {n / dt:.0f} {dt:.3f} {rss_mb()}")


def run_pathway(bootstrap: str, src: str, out: str, n: int) -> None:
    import pathway as pw

    class Trade(pw.Schema):
        sym: str
        px: float
        qty: int

    settings = {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest", "session.timeout.ms": "6000"}
    t0 = time.perf_counter()
    trades = pw.io.kafka.read(settings, src, schema=Trade, format="json", mode="static")
    agg = trades.groupby(trades.sym).reduce(
        trades.sym, n=pw.reducers.count(), q=pw.reducers.sum(trades.qty), p=pw.reducers.avg(trades.px)
    )
    pw.io.kafka.write(agg, {"bootstrap.servers": bootstrap}, out, format="json")
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    dt = time.perf_counter() - t0
    print(f"RESULT pathway {n / dt:.0f} {dt:.3f} {rss_mb()}")


def verify(bootstrap: str, out: str, n: int) -> None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
    parts = c.list_topics(out, timeout=10).topics[out].partitions
    c.assign([TopicPartition(out, p, 0) for p in parts])
    latest, quiet = {}, time.monotonic()
    while time.monotonic() - quiet < 3:
        m = c.poll(0.2)
        if m is None or m.error() is not None or m.value() is None:
            continue
        quiet = time.monotonic()
        row = json.loads(m.value())
        # Pathway writes a `diff` (+1 insert / -1 retraction) per change; keep the inserts.
        if row.get("diff", 1) == 1:
            latest[row["sym"]] = row["n"]
    total = sum(latest.values())
    ok = len(latest) == KEYS and total == n
    print(f"VERIFY {out} {'ok' if ok else 'INCOMPLETE'} {len(latest)} keys, counts add up to {total} of {n}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        produce(args[0], args[1], int(args[2]))
    elif cmd == "laminardb":
        create_out(args[0], args[2])
        run_laminardb(args[0], args[1], args[2], int(args[3]))
    elif cmd == "pathway":
        create_out(args[0], args[2])
        run_pathway(args[0], args[1], args[2], int(args[3]))
    elif cmd == "verify":
        verify(args[0], args[1], int(args[2]))
    else:
        sys.exit(__doc__)

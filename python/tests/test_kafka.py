"""Kafka source and sink (F-PY-012, F-PY-019) from Python against a real Kafka-protocol broker
(started by scripts/services.sh; its address in LAMINAR_TEST_KAFKA_BOOTSTRAP). Messages are
produced and read back with an independent client (confluent-kafka); Avro records are written
and read with fastavro through a Confluent-protocol schema registry running in the test."""

import io
import json
import os
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import laminardb

BOOTSTRAP = os.environ.get("LAMINAR_TEST_KAFKA_BOOTSTRAP")
if not BOOTSTRAP:
    raise RuntimeError("LAMINAR_TEST_KAFKA_BOOTSTRAP is not set: run scripts/test.sh (it starts the broker)")


def wait_for(pred, timeout=30.0):
    t = time.monotonic()
    while not pred():
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.02)


def topic(prefix: str, partitions: int = 1) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result()
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "meta"})
    wait_for(lambda: len(c.list_topics(name, timeout=5).topics[name].partitions) == partitions, 10)
    c.close()
    return name


def produce(name: str, values, key=None):
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for v in values:
        p.produce(name, value=v, key=key(v) if key else None)
    assert p.flush(30) == 0


def consume(name: str, want: int, timeout: float = 15.0):
    c = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": uuid.uuid4().hex, "enable.auto.commit": False,
         "isolation.level": "read_committed"}
    )
    parts = c.list_topics(name, timeout=5).topics[name].partitions
    c.assign([TopicPartition(name, p, 0) for p in parts])
    out, t = [], time.monotonic()
    while len(out) < want and time.monotonic() - t < timeout:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            out.append(m)
    c.close()
    return out


class Registry:
    """A schema registry speaking the Confluent REST protocol: subjects, versions, ids."""

    def __init__(self):
        self.schemas: list[str] = []
        self.subjects: dict[str, list[int]] = {}
        reg = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                if parts[:2] == ["schemas", "ids"] and parts[2].isdigit() and 0 < int(parts[2]) <= len(reg.schemas):
                    return self.reply(200, {"schema": reg.schemas[int(parts[2]) - 1]})
                self.reply(404, {"error_code": 40403, "message": "Schema not found"})

            def do_POST(self):
                parts = self.path.strip("/").split("/")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                    return self.reply(200, {"id": reg.register(parts[1], body["schema"])})
                self.reply(404, {"error_code": 404, "message": "Not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def register(self, subject: str, schema: str) -> int:
        if schema not in self.schemas:
            self.schemas.append(schema)
        sid = self.schemas.index(schema) + 1
        ids = self.subjects.setdefault(subject, [])
        if sid not in ids:
            ids.append(sid)
        return sid


@pytest.fixture
def registry():
    r = Registry()
    yield r
    r.server.shutdown()


def test_json_source_aggregate_subscription_and_metrics():
    market = topic("market-data", 3)
    rows = [{"symbol": f"S{i % 4}", "bid": float(i), "ask": float(i) + 0.5, "timestamp": "2024-01-01T00:00:00Z"}
            for i in range(400)]
    produce(market, [json.dumps(r).encode() for r in rows])
    with laminardb.open(":memory:") as db:
        r = db.execute(f"""
            CREATE SOURCE market_data (symbol VARCHAR, bid DOUBLE, ask DOUBLE, timestamp TIMESTAMP) WITH (
                connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', 'topic' = '{market}',
                'group.id' = 'laminar-market', 'format' = 'json', 'auto.offset.reset' = 'earliest')
        """)
        assert r.result_type == "ddl" and r.ddl_type == "CREATE SOURCE"
        assert [s.name for s in db.sources()] == ["market_data"]
        db.execute("""
            CREATE STREAM trade_summary AS SELECT symbol, COUNT(*) AS trade_count, AVG(bid) AS avg_bid,
                MAX(ask) AS max_ask FROM market_data GROUP BY symbol
        """)
        sub = db.subscribe_stream("trade_summary")
        db.start()
        wait_for(lambda: db.source_metrics("market_data").total_events == 400)
        latest = {}
        deadline = time.monotonic() + 15
        while sum(v["trade_count"] for v in latest.values()) < 400 and time.monotonic() < deadline:
            batch = sub.next_timeout(1000)
            if batch is None:
                continue
            for row in batch.to_dicts():
                latest[row["symbol"]] = row
        sub.cancel()
        assert {k: v["trade_count"] for k, v in latest.items()} == {f"S{k}": 100 for k in range(4)}
        assert latest["S3"]["max_ask"] == 399.5
        assert latest["S1"]["avg_bid"] == sum(range(1, 400, 4)) / 100
        m = db.source_metrics("market_data")
        assert m.connector_state == "running" and m.pending >= 0 and not m.is_backpressured
        assert any(n.name == "market_data" and n.node_type == "source" for n in db.topology().nodes)


def test_avro_source_written_by_fastavro_and_debezium_changes(registry):
    orders, users = topic("orders", 2), topic("users")
    schema = {"type": "record", "name": "order", "fields": [
        {"name": "order_id", "type": "string"}, {"name": "customer_id", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    sid = registry.register(f"{orders}-value", json.dumps(schema))
    parsed = fastavro.parse_schema(schema)

    def framed(rec):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, rec)
        return b"\x00" + struct.pack(">I", sid) + buf.getvalue()

    produce(orders, [framed({"order_id": f"o{i}", "customer_id": i % 3, "amount": i * 1.5,
                             "created_at": 1_704_067_200_000 + i}) for i in range(30)])
    changes = [
        {"before": None, "after": {"id": 1, "name": "ann", "email": "a@x"}, "op": "c"},
        {"before": None, "after": {"id": 2, "name": "bob", "email": "b@x"}, "op": "r"},
        {"before": {"id": 1, "name": "ann", "email": "a@x"}, "after": {"id": 1, "name": "ann", "email": "ann@x"}, "op": "u"},
        {"before": {"id": 2, "name": "bob", "email": "b@x"}, "after": None, "op": "d"},
    ]
    produce(users, [json.dumps(c).encode() for c in changes] + [None])  # None: a tombstone
    with laminardb.open(":memory:") as db:
        db.execute(f"""
            CREATE SOURCE orders (order_id VARCHAR, customer_id BIGINT, amount DOUBLE, created_at TIMESTAMP) WITH (
                connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', 'topic' = '{orders}',
                'group.id' = 'laminar-orders', 'format' = 'avro', 'schema.registry.url' = '{registry.url}',
                'auto.offset.reset' = 'earliest')
        """)
        db.execute(f"""
            CREATE SOURCE user_changes (id BIGINT, name VARCHAR, email VARCHAR, PRIMARY KEY (id)) WITH (
                connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', 'topic' = '{users}',
                'group.id' = 'laminar-cdc', 'format' = 'debezium', 'auto.offset.reset' = 'earliest')
        """)
        db.start()
        wait_for(lambda: db.source_metrics("orders").total_events == 30
                 and db.query("SELECT id, email FROM user_changes").to_dicts() == [{"id": 1, "email": "ann@x"}])
        db.flush()
        per = db.query("SELECT customer_id, SUM(amount) AS s FROM orders GROUP BY customer_id").to_dicts()
        assert {r["customer_id"]: r["s"] for r in per} == {c: sum(i * 1.5 for i in range(30) if i % 3 == c) for c in range(3)}
        first = db.query("SELECT created_at FROM orders WHERE order_id = 'o0'").to_arrow().column(0)[0].as_py()
        assert first.year == 2024 and first.month == 1 and first.day == 1
        assert db.query("SELECT id, email FROM user_changes").to_dicts() == [{"id": 1, "email": "ann@x"}]


def test_spec_sink_example_avro_exactly_once_and_key_partitioning(tmp_path, registry):
    events, summary, parts = topic("user-events", 2), topic("user-activity-summary", 2), topic("partitioned-events", 4)
    produce(events, [json.dumps({"event_id": f"e{i}", "user_id": i % 5, "action": "click" if i % 2 else "view",
                                 "ts": f"2024-01-01T00:00:{i % 60:02d}Z"}).encode() for i in range(100)])
    cfg = laminardb.LaminarConfig(checkpoint_interval_ms=200)
    with laminardb.open(str(tmp_path / "streaming"), config=cfg) as db:
        db.execute(f"""
            CREATE SOURCE raw_events (event_id VARCHAR, user_id BIGINT, action VARCHAR, ts TIMESTAMP) WITH (
                connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', 'topic' = '{events}',
                'group.id' = 'enrichment', 'format' = 'json', 'auto.offset.reset' = 'earliest')
        """)
        db.execute("""
            CREATE STREAM user_activity AS SELECT user_id, COUNT(*) AS event_count, MAX(ts) AS last_seen
            FROM raw_events GROUP BY user_id
        """)
        db.execute(f"""
            CREATE SINK activity_sink AS SELECT * FROM user_activity WITH (
                connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', 'topic' = '{summary}',
                'format' = 'avro', 'schema.registry.url' = '{registry.url}',
                'delivery.guarantee' = 'exactly-once', 'transactional.id' = 'activity-{summary}')
        """)
        db.execute(f"""
            CREATE SINK partitioned_sink AS SELECT user_id, action, ts FROM raw_events WITH (
                connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', 'topic' = '{parts}',
                'format' = 'json', 'partitioner' = 'key-hash')
        """)
        assert sorted(s.name for s in db.sinks()) == ["activity_sink", "partitioned_sink"]
        db.start()
        wait_for(lambda: db.source_metrics("raw_events").total_events == 100)
        db.flush()
        db.checkpoint()  # exactly-once: the transaction commits once the checkpoint is durable
        assert db.metrics().total_events_emitted >= 100
        db.shutdown()

    # The value schema was registered under <topic>-value; records carry its id.
    (sid,) = registry.subjects[f"{summary}-value"]
    schema = fastavro.parse_schema(json.loads(registry.schemas[sid - 1]))
    latest = {}
    for m in consume(summary, 10_000, timeout=5):
        v = m.value()
        assert v[0] == 0 and struct.unpack(">I", v[1:5])[0] == sid
        rec = fastavro.schemaless_reader(io.BytesIO(v[5:]), schema)
        latest[m.key()] = rec
    assert {r["user_id"]: r["event_count"] for r in latest.values()} == {u: 20 for u in range(5)}

    msgs = consume(parts, 100)
    assert len(msgs) == 100
    partition_of = {}
    for m in msgs:
        row = json.loads(m.value())
        assert partition_of.setdefault(row["user_id"], m.partition()) == m.partition(), "one partition per key"
    assert len(set(partition_of.values())) > 1, "keys spread over partitions"


def test_bad_options_and_a_dead_broker_raise_connector_error():
    with laminardb.open(":memory:") as db:
        with pytest.raises(laminardb.ConnectorError, match="group.id"):
            db.execute(f"CREATE SOURCE s (x BIGINT) WITH (connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', "
                       "'topic' = 't')")
        with pytest.raises(laminardb.ConnectorError, match="sasl.pasword"):
            db.execute(f"CREATE SOURCE s (x BIGINT) WITH (connector = 'kafka', 'bootstrap.servers' = '{BOOTSTRAP}', "
                       "'topic' = 't', 'group.id' = 'g', 'sasl.pasword' = 'secret')")
        assert db.sources() == []
        db.execute("CREATE SOURCE s (x BIGINT) WITH (connector = 'kafka', 'bootstrap.servers' = '127.0.0.1:1', "
                   "'topic' = 't', 'group.id' = 'g', 'sasl.password' = 'hunter2', 'sasl.username' = 'u')")
        t = time.monotonic()
        with pytest.raises(laminardb.ConnectorError) as e:
            db.start()
        assert time.monotonic() - t < 30
        assert "127.0.0.1:1" in str(e.value) and "hunter2" not in str(e.value)

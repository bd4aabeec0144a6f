"""RabbitMQ source and sink (F-PY-015, F-PY-021) from Python against a real RabbitMQ server
(started by scripts/services.sh; its URI in LAMINAR_TEST_RABBITMQ_URI). Messages are published
and read back with an independent AMQP client (pika); the spec's examples run against it."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

import laminardb

pika = pytest.importorskip("pika")

URI = os.environ.get("LAMINAR_TEST_RABBITMQ_URI")
if not URI:
    raise RuntimeError("LAMINAR_TEST_RABBITMQ_URI is not set: run scripts/test.sh (it starts the broker)")


def wait_for(what, f, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not f():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Amqp:
    """A blocking pika connection for setting up queues and exchanges, publishing and reading."""

    def __init__(self):
        self.conn = pika.BlockingConnection(pika.URLParameters(URI))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def queue(self, q: str) -> str:
        self.ch.queue_declare(q, durable=True)
        return q

    def publish(self, q: str, bodies):
        for b in bodies:
            self.ch.basic_publish("", q, b if isinstance(b, bytes) else b.encode(),
                                  pika.BasicProperties(delivery_mode=2))

    def get(self, q: str, want: int, timeout: float = 20.0):
        out, deadline = [], time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            method, props, body = self.ch.basic_get(q, auto_ack=True)
            if method is None:
                self.conn.sleep(0.02)
                continue
            out.append((method, props, body))
        return out

    def depth(self, q: str) -> int:
        return self.ch.queue_declare(q, passive=True).method.message_count

    def close(self):
        self.conn.close()


@pytest.fixture
def amqp():
    a = Amqp()
    yield a
    a.close()


def test_spec_source_example_consumes_tasks_with_auto_ack(amqp):
    q = amqp.queue(name("tasks"))
    tasks = [
        {"task_id": f"t{i}", "task_type": "resize" if i % 2 else "encode", "payload": "{}", "priority": i % 3,
         "created_at": f"2026-12-06T10:00:{i % 60:02d}"}
        for i in range(120)
    ]
    amqp.publish(q, [json.dumps(t) for t in tasks])
    with laminardb.open(":memory:") as db:
        db.execute(f"""
            CREATE SOURCE task_queue (
                task_id VARCHAR, task_type VARCHAR, payload VARCHAR, priority INT, created_at TIMESTAMP
            ) WITH (
                connector = 'rabbitmq',
                'uri' = '{URI}',
                'queue' = '{q}',
                'format' = 'json',
                'prefetch_count' = '100',
                'ack_mode' = 'auto'
            )
        """)
        db.execute("CREATE STREAM by_type AS SELECT task_type, COUNT(*) AS n FROM task_queue GROUP BY task_type")
        db.start()
        wait_for("every task", lambda: db.source_metrics("task_queue").total_events == 120)
        db.flush()
        rows = {r["task_type"]: r["n"] for r in db.query("SELECT * FROM by_type").to_dicts()}
        assert rows == {"encode": 60, "resize": 60}
        first = db.query("SELECT task_id, priority, created_at FROM task_queue WHERE task_id = 't7'").to_dicts()
        assert first[0]["priority"] == 1
        m = db.source_metrics("task_queue")
        assert m.connector_state == "running"
        assert m.details["messages"] == 120
        wait_for("acknowledged", lambda: amqp.depth(q) == 0)


def test_spec_sink_example_publishes_completed_orders_with_mandatory(amqp):
    ex = name("order-events")
    amqp.ch.exchange_declare(ex, exchange_type="topic")
    q = amqp.queue(name("completed"))
    amqp.ch.queue_bind(q, ex, routing_key="order.completed")
    with laminardb.open(":memory:") as db:
        db.execute("CREATE SOURCE orders (order_id BIGINT, status VARCHAR, ts TIMESTAMP)")
        db.execute(f"""
            CREATE SINK order_completed AS
            SELECT order_id, ts FROM orders WHERE status = 'completed'
            WITH (
                connector = 'rabbitmq',
                'uri' = '{URI}',
                'exchange' = '{ex}',
                'routing_key' = 'order.completed',
                'format' = 'json',
                'mandatory' = 'true'
            )
        """)
        db.start()
        db.insert("orders", [
            {"order_id": i, "status": "completed" if i % 2 == 0 else "open", "ts": "2026-12-06T10:00:00"}
            for i in range(40)
        ])
        db.flush()
        got = amqp.get(q, 20)
        assert sorted(json.loads(body)["order_id"] for _, _, body in got) == list(range(0, 40, 2))
        _, props, body = got[0]
        assert props.content_type == "application/json"
        assert props.delivery_mode == 2
        assert int(props.headers["laminar.epoch"]) >= 1
        assert set(json.loads(body)) == {"order_id", "ts"}
        m = db.sink_metrics("order_completed")
        assert m.details["messages"] == 20 and m.details.get("returned", 0) == 0


def test_updating_query_sends_changes_with_op(amqp):
    q = amqp.queue(name("totals"))
    with laminardb.open(":memory:") as db:
        db.execute("CREATE SOURCE trades (sym VARCHAR, qty BIGINT)")
        db.execute(f"""
            CREATE SINK totals AS SELECT sym, SUM(qty) AS total FROM trades GROUP BY sym
            WITH (connector = 'rabbitmq', 'uri' = '{URI}', 'routing_key' = '{q}')
        """)
        db.start()
        db.insert("trades", [{"sym": "A", "qty": 1}, {"sym": "B", "qty": 2}])
        db.flush()
        first = sorted(json.loads(b)["sym"] + ":" + json.loads(b)["op"] for _, _, b in amqp.get(q, 2))
        assert first == ["A:insert", "B:insert"]
        db.insert("trades", [{"sym": "A", "qty": 10}])
        db.flush()
        [(_, props, body)] = amqp.get(q, 1)
        assert json.loads(body) == {"sym": "A", "total": 11, "op": "update"}
        assert props.headers["laminar.op"] == "update"


def test_errors_are_connector_errors(amqp):
    with laminardb.open(":memory:") as db:
        with pytest.raises(laminardb.ConnectorError, match="prefetch_count"):
            db.execute(f"CREATE SOURCE s (x VARCHAR) WITH (connector = 'rabbitmq', 'uri' = '{URI}', "
                       "'queue' = 'q', 'prefetch_count' = 'lots')")
        with pytest.raises(laminardb.ConnectorError, match="queue"):
            db.execute(f"CREATE SOURCE s (x VARCHAR) WITH (connector = 'rabbitmq', 'uri' = '{URI}')")
        assert db.sources() == []
        missing = name("missing")
        db.execute(f"CREATE SOURCE s (x VARCHAR) WITH (connector = 'rabbitmq', 'uri' = '{URI}', 'queue' = '{missing}')")
        with pytest.raises(laminardb.ConnectorError, match=missing):
            db.start()


def test_manual_ack_avro_records_written_by_fastavro(amqp):
    fastavro = pytest.importorskip("fastavro")
    import io

    schema = {"type": "record", "name": "reading", "fields": [
        {"name": "sensor", "type": "string"}, {"name": "value", "type": "double"}]}
    parsed = fastavro.parse_schema(schema)

    def datum(rec):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, rec)
        return buf.getvalue()

    q = amqp.queue(name("readings"))
    amqp.publish(q, [datum({"sensor": f"s{i % 4}", "value": i / 2}) for i in range(80)] + [b"\xff\xff"])
    with laminardb.open(":memory:") as db:
        db.execute(f"""
            CREATE SOURCE readings (sensor VARCHAR, value DOUBLE) WITH (
                connector = 'rabbitmq', 'uri' = '{URI}', 'queue' = '{q}', 'format' = 'avro',
                'avro.schema' = '{json.dumps(schema)}', 'ack_mode' = 'manual')
        """)
        db.start()
        wait_for("every reading", lambda: db.source_metrics("readings").total_events == 80)
        db.flush()
        assert db.query("SELECT COUNT(*) AS n, SUM(value) AS s FROM readings").to_dicts() == [
            {"n": 80, "s": sum(i / 2 for i in range(80))}]
        errors = db.query("SELECT position FROM readings_errors").to_dicts()
        assert errors == [{"position": f"{q}#81"}]
        # Manual mode without periodic checkpoints: acknowledged once taken in.
        wait_for("acknowledged", lambda: amqp.depth(q) == 0)

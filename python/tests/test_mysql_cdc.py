"""MySQL CDC (F-PY-014) from Python against a real MariaDB with a row-based binary log, and the
spec's cross-database example (MariaDB orders joined with Postgres users), both started by
scripts/services.sh (LAMINAR_TEST_MYSQL_URI, LAMINAR_TEST_POSTGRES_URI). Upstream rows are
written with the databases' own command-line clients."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from urllib.parse import urlparse

import pytest

import laminardb

MYSQL = os.environ.get("LAMINAR_TEST_MYSQL_URI")
PG = os.environ.get("LAMINAR_TEST_POSTGRES_URI")
if not MYSQL or not PG:
    raise RuntimeError("LAMINAR_TEST_MYSQL_URI / LAMINAR_TEST_POSTGRES_URI are not set: run scripts/test.sh")


def mysql(sql: str) -> str:
    u = urlparse(MYSQL)
    out = subprocess.run(["mariadb", "--no-defaults", "-h", u.hostname, "-P", str(u.port), "-u", u.username,
                          f"-p{u.password}", u.path.lstrip("/"), "-N", "-B", "-e", sql],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def psql(sql: str) -> str:
    out = subprocess.run(["psql", PG, "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_for(what, f, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = f()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def orders_table():
    t = name("orders")
    mysql(f"CREATE TABLE {t} (order_id BIGINT PRIMARY KEY, customer_id BIGINT, total DOUBLE, status VARCHAR(20), "
          f"created_at DATETIME)")
    mysql(f"INSERT INTO {t} VALUES (1, 1, 10.5, 'new', '2026-12-06 10:00:00'), "
          f"(2, 2, 20.0, 'shipped', '2026-12-06 11:00:00')")
    yield t
    mysql(f"DROP TABLE IF EXISTS {t}")


def test_spec_ddl_creates_a_cataloged_source_without_connecting(tmp_path):
    db = laminardb.open(str(tmp_path / "replication"))
    db.execute("""
        CREATE SOURCE orders (
            order_id BIGINT,
            customer_id BIGINT,
            total DOUBLE,
            status VARCHAR,
            created_at TIMESTAMP
        ) WITH (
            connector = 'mysql-cdc',
            'connection' = 'mysql://user:pass@mysqlhost:3306/shop',
            'table' = 'orders',
            'server_id' = '1001'
        )
    """)
    assert "orders" in db.list_tables()
    db.close()
    db = laminardb.open(str(tmp_path / "replication"))
    assert "orders" in db.list_tables()
    db.close()


def test_missing_keys_raise_connector_error():
    with laminardb.open(":memory:") as db:
        with pytest.raises(laminardb.ConnectorError, match="'connection'"):
            db.execute("CREATE SOURCE s (id BIGINT) WITH (connector = 'mysql-cdc', 'table' = 'orders')")
        with pytest.raises(laminardb.ConnectorError, match="'table'"):
            db.execute(f"CREATE SOURCE s (id BIGINT) WITH (connector = 'mysql-cdc', 'connection' = '{MYSQL}')")
        assert "s" not in db.list_tables()


def test_inserts_updates_and_deletes_are_captured(orders_table):
    with laminardb.open(":memory:") as db:
        db.execute(f"""
            CREATE SOURCE orders (order_id BIGINT, customer_id BIGINT, total DOUBLE, status VARCHAR,
                                  created_at TIMESTAMP)
            WITH (connector = 'mysql-cdc', 'connection' = '{MYSQL}', 'table' = '{orders_table}',
                  'server_id' = '{5000 + uuid.uuid4().int % 1000}')
        """)
        db.start()

        def rows():
            return sorted(db.query("SELECT order_id, status, total FROM orders").to_arrow().to_pylist(),
                          key=lambda r: r["order_id"])

        wait_for("the snapshot", lambda: len(rows()) == 2)
        mysql(f"INSERT INTO {orders_table} VALUES (3, 1, 30.25, 'new', NOW())")
        mysql(f"UPDATE {orders_table} SET status = 'shipped', total = 11.0 WHERE order_id = 1")
        mysql(f"DELETE FROM {orders_table} WHERE order_id = 2")
        want = [{"order_id": 1, "status": "shipped", "total": 11.0},
                {"order_id": 3, "status": "new", "total": 30.25}]
        wait_for("the changes", lambda: rows() == want)
        m = db.source_metrics("orders")
        assert m.connector_state == "running"
        assert m.details["snapshot_rows"] == 2
        assert m.details["transactions"] >= 3
        assert ("source", "orders") in {(n.node_type, n.name) for n in db.topology().nodes}
        db.shutdown()


def test_schema_mismatch_is_reported_at_start_naming_the_column(orders_table):
    with laminardb.open(":memory:") as db:
        db.execute(f"""
            CREATE SOURCE orders (order_id BIGINT, status BIGINT)
            WITH (connector = 'mysql-cdc', 'connection' = '{MYSQL}', 'table' = '{orders_table}')
        """)
        with pytest.raises(laminardb.ConnectorError, match="column 'status'"):
            db.start()


def test_spec_usage_example_joins_mysql_orders_with_postgres_users(tmp_path):
    orders_table = name("orders")
    mysql(f"CREATE TABLE {orders_table} (order_id BIGINT PRIMARY KEY, customer_id BIGINT, total_amount DOUBLE, "
          f"status VARCHAR(20), created_at DATETIME)")
    mysql(f"INSERT INTO {orders_table} VALUES (1, 1, 10.5, 'new', '2026-12-06 10:00:00'), "
          f"(2, 2, 20.0, 'shipped', '2026-12-06 11:00:00')")
    users = name("users")
    slot = name("spec_join")
    psql(f"CREATE TABLE {users} (id BIGINT PRIMARY KEY, name TEXT, email TEXT, role TEXT, updated_at TIMESTAMP)")
    psql(f"INSERT INTO {users} VALUES (1, 'ann', 'ann@example.com', 'admin', now()), "
         f"(2, 'bob', 'bob@example.com', 'user', now())")
    try:
        # The spec's example with the test servers' addresses.
        with laminardb.open(str(tmp_path / "cdc_pipeline")) as db:
            db.execute(f"""
                CREATE SOURCE pg_users (
                    id BIGINT,
                    name VARCHAR,
                    email VARCHAR,
                    role VARCHAR,
                    updated_at TIMESTAMP
                ) WITH (
                    connector = 'postgres-cdc',
                    'connection' = '{PG}',
                    'table' = 'public.{users}',
                    'slot.name' = '{slot}',
                    'publication.name' = '{slot}'
                )
            """)
            db.execute(f"""
                CREATE SOURCE mysql_orders (
                    order_id BIGINT,
                    customer_id BIGINT,
                    total_amount DOUBLE,
                    status VARCHAR,
                    created_at TIMESTAMP
                ) WITH (
                    connector = 'mysql-cdc',
                    'connection' = '{MYSQL}',
                    'table' = '{orders_table}',
                    'server_id' = '2001'
                )
            """)
            db.execute("""
                CREATE STREAM enriched_orders AS
                SELECT
                    o.order_id,
                    o.total_amount,
                    o.status,
                    u.name as customer_name,
                    u.email as customer_email
                FROM mysql_orders o
                JOIN pg_users u ON o.customer_id = u.id
            """)
            db.start()
            seen = {}
            new_orders = 0
            sub = db.subscribe_stream("enriched_orders")
            mysql(f"INSERT INTO {orders_table} VALUES (3, 2, 5.0, 'new', NOW())")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(seen) < 3:
                batch = sub.try_next()
                if batch is None:
                    time.sleep(0.02)
                    continue
                df = batch.to_pandas()
                new_orders += int((df["status"] == "new").sum())
                for r in df.to_dict("records"):
                    seen[r["order_id"]] = (r["customer_name"], r["status"])
            sub.cancel()
            assert seen == {1: ("ann", "new"), 2: ("bob", "shipped"), 3: ("bob", "new")}
            assert new_orders == 2
            db.shutdown()
    finally:
        for _ in range(100):
            state = psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'").strip()
            if state == "f":
                psql(f"SELECT pg_drop_replication_slot('{slot}')")
                break
            if state == "":
                break
            time.sleep(0.1)
        psql(f"DROP PUBLICATION IF EXISTS {slot}")
        psql(f"DROP TABLE IF EXISTS {users}")
        mysql(f"DROP TABLE IF EXISTS {orders_table}")

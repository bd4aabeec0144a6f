"""Postgres CDC (F-PY-014) from Python against a real Postgres with logical replication (started
by scripts/services.sh; its URI in LAMINAR_TEST_POSTGRES_URI). Upstream rows are written with
psql; the spec's example DDL runs as written."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

import laminardb

URI = os.environ.get("LAMINAR_TEST_POSTGRES_URI")
if not URI:
    raise RuntimeError("LAMINAR_TEST_POSTGRES_URI is not set: run scripts/test.sh (it starts Postgres)")


def psql(sql: str) -> str:
    out = subprocess.run(["psql", URI, "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
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


def drop_slot(slot: str):
    for _ in range(100):
        state = psql(f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'").strip()
        if state == "":
            return
        if state == "f":
            psql(f"SELECT pg_drop_replication_slot('{slot}')")
            return
        time.sleep(0.1)


@pytest.fixture
def users_table():
    t = name("users")
    psql(f"CREATE TABLE {t} (id BIGINT PRIMARY KEY, name TEXT, email TEXT, role TEXT, updated_at TIMESTAMP)")
    psql(f"INSERT INTO {t} VALUES (1, 'ann', 'ann@example.com', 'admin', '2026-12-06 10:00:00'), "
         f"(2, 'bob', 'bob@example.com', 'user', '2026-12-06 11:00:00')")
    yield t
    psql(f"DROP TABLE IF EXISTS {t}")


def test_spec_ddl_creates_a_cataloged_source_without_connecting(tmp_path):
    # The spec's first example, as written (no server is contacted before start()).
    db = laminardb.open(str(tmp_path / "replication"))
    db.execute("""
        CREATE SOURCE users (
            id BIGINT,
            name VARCHAR,
            email VARCHAR,
            updated_at TIMESTAMP
        ) WITH (
            connector = 'postgres-cdc',
            'connection' = 'postgresql://user:pass@pghost:5432/mydb',
            'table' = 'public.users',
            'slot.name' = 'laminar_users'
        )
    """)
    assert "users" in db.list_tables()
    ddl = [s for s in db.sources() if s.name == "users"]
    assert ddl and "pass@" not in str(ddl[0]), "the password is not shown back"
    db.close()
    # Persisted with the catalog.
    db = laminardb.open(str(tmp_path / "replication"))
    assert "users" in db.list_tables()
    db.close()


def test_missing_keys_raise_connector_error():
    with laminardb.open(":memory:") as db:
        with pytest.raises(laminardb.ConnectorError, match="'connection'"):
            db.execute("CREATE SOURCE s (id BIGINT) WITH (connector = 'postgres-cdc', 'table' = 'public.t')")
        with pytest.raises(laminardb.ConnectorError, match="'table'"):
            db.execute(f"CREATE SOURCE s (id BIGINT) WITH (connector = 'postgres-cdc', 'connection' = '{URI}')")
        assert "s" not in db.list_tables()


def test_rows_snapshot_and_changes_reach_queries_with_metrics_and_topology(users_table):
    slot = name("py_cdc")
    with laminardb.open(":memory:") as db:
        db.execute(f"""
            CREATE SOURCE pg_users (id BIGINT, name VARCHAR, email VARCHAR, role VARCHAR, updated_at TIMESTAMP)
            WITH (connector = 'postgres-cdc', 'connection' = '{URI}', 'table' = 'public.{users_table}',
                  'slot.name' = '{slot}', 'publication.name' = '{slot}')
        """)
        db.execute("CREATE MATERIALIZED VIEW roles AS SELECT role, COUNT(*) AS n FROM pg_users GROUP BY role")
        db.start()

        def rows():
            return sorted(db.query("SELECT id, name, role FROM pg_users").to_arrow().to_pylist(), key=lambda r: r["id"])

        wait_for("the snapshot", lambda: len(rows()) == 2)
        psql(f"INSERT INTO {users_table} VALUES (3, 'cy', 'cy@example.com', 'user', now())")
        psql(f"UPDATE {users_table} SET role = 'admin' WHERE id = 2")
        psql(f"DELETE FROM {users_table} WHERE id = 1")
        want = [{"id": 2, "name": "bob", "role": "admin"}, {"id": 3, "name": "cy", "role": "user"}]
        wait_for("the changes", lambda: rows() == want)
        def roles():
            return sorted(db.query("SELECT role, n FROM roles").to_arrow().to_pylist(), key=lambda r: r["role"])

        wait_for("the aggregate", lambda: roles() == [{"role": "admin", "n": 1}, {"role": "user", "n": 1}])

        m = db.source_metrics("pg_users")
        assert m.connector_state == "running"
        assert m.details["snapshot_rows"] == 2
        assert m.details["transactions"] >= 3
        assert m.details["lsn"] > 0
        topo = db.topology()
        assert ("source", "pg_users") in {(n.node_type, n.name) for n in topo.nodes}
        assert ("pg_users", "roles") in {(e.from_node, e.to_node) for e in topo.edges}
        db.shutdown()
    drop_slot(slot)
    psql(f"DROP PUBLICATION IF EXISTS {slot}")


def test_schema_mismatch_is_reported_at_start_naming_the_column(users_table):
    with laminardb.open(":memory:") as db:
        db.execute(f"""
            CREATE SOURCE pg_users (id BIGINT, name BIGINT)
            WITH (connector = 'postgres-cdc', 'connection' = '{URI}', 'table' = 'public.{users_table}',
                  'slot.name' = '{name("never")}')
        """)
        with pytest.raises(laminardb.ConnectorError, match="column 'name'"):
            db.start()

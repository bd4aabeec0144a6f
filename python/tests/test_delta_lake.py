"""Delta Lake source (F-PY-016) and sink (F-PY-022) from Python, checked against the `deltalake`
package as the independent writer and reader of the same tables."""

from __future__ import annotations

import json
import os
import time
import uuid

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

import laminardb


def wait_for(what, f, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = f()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def table_rows(path, *columns):
    t = DeltaTable(str(path)).to_pyarrow_table()
    return sorted(tuple(r[c] for c in columns) for r in t.to_pylist())


def query_rows(db, sql):
    return sorted(tuple(r.values()) for r in db.query(sql).to_dicts())


def test_source_reads_snapshot_and_appends_of_another_writer(tmp_path):
    table = tmp_path / "inventory"
    write_deltalake(str(table), pa.table({"product_id": [1, 2], "warehouse": ["a", "b"],
                                          "quantity": pa.array([5, 7], pa.int32())}))
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute(f"""
            CREATE SOURCE inventory (product_id BIGINT, warehouse VARCHAR, quantity INT)
            WITH (connector = 'delta-lake', 'table_uri' = '{table}', 'poll_interval_ms' = '100')""")
        assert [s.name for s in db.sources()] == ["inventory"]
        assert "inventory" in db.list_tables()
        db.start()
        wait_for("the snapshot", lambda: query_rows(db, "SELECT product_id, quantity FROM inventory")
                 == [(1, 5), (2, 7)])
        write_deltalake(str(table), pa.table({"product_id": [3], "warehouse": ["c"],
                                              "quantity": pa.array([9], pa.int32())}), mode="append")
        wait_for("the appended version", lambda: query_rows(db, "SELECT product_id, quantity FROM inventory")
                 == [(1, 5), (2, 7), (3, 9)])
        m = db.source_metrics("inventory")
        assert m.name == "inventory" and m.total_events == 3


def test_sink_append_read_back_by_deltalake(tmp_path):
    out = tmp_path / "archive"
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE sensor_data (id BIGINT, temp DOUBLE, site VARCHAR)")
        db.execute(f"""
            CREATE SINK archive AS SELECT * FROM sensor_data
            WITH (connector = 'delta-lake', 'table_uri' = '{out}', 'write_mode' = 'append',
                  'partition_by' = 'site')""")
        assert [s.name for s in db.sinks()] == ["archive"]
        db.start()
        rows = [{"id": i, "temp": i / 2, "site": "north" if i % 2 else "south"} for i in range(1000)]
        db.insert("sensor_data", rows[:600])
        db.insert("sensor_data", rows[600:])
        db.flush()
        wait_for("all rows", lambda: db.metrics().total_events_emitted >= 1000)
        wait_for("the commits", lambda: (out / "_delta_log").exists()
                 and len(DeltaTable(str(out)).to_pyarrow_table()) == 1000)
    dt = DeltaTable(str(out))
    assert dt.metadata().partition_columns == ["site"]
    assert table_rows(out, "id", "temp", "site") == sorted((r["id"], r["temp"], r["site"]) for r in rows)
    epochs = [h.get("laminardb.epoch") for h in dt.history() if h.get("operation") == "WRITE"]
    assert epochs and all(e is not None for e in epochs)


def test_sink_upsert_merge_semantics_and_overwrite(tmp_path):
    up, ow = tmp_path / "up", tmp_path / "ow"
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE tx (tx_id VARCHAR PRIMARY KEY, account BIGINT, amount DOUBLE)")
        db.execute(f"""
            CREATE SINK per_account AS SELECT account, SUM(amount) AS total, COUNT(*) AS n FROM tx GROUP BY account
            WITH (connector = 'delta-lake', 'table_uri' = '{up}', 'write_mode' = 'upsert')""")
        db.execute(f"""
            CREATE SINK latest AS SELECT tx_id, amount FROM tx
            WITH (connector = 'delta-lake', 'table_uri' = '{ow}', 'write_mode' = 'overwrite')""")
        db.start()
        db.insert("tx", [{"tx_id": "t1", "account": 1, "amount": 10.0}, {"tx_id": "t2", "account": 2, "amount": 5.0}])
        db.flush()
        wait_for("first merge", lambda: (up / "_delta_log").exists()
                 and table_rows(up, "account", "total", "n") == [(1, 10.0, 1), (2, 5.0, 1)])
        # Conflicting keys: t2 moves to account 1 (account 2 disappears), t3 opens account 3.
        db.insert("tx", [{"tx_id": "t2", "account": 1, "amount": 7.0}, {"tx_id": "t3", "account": 3, "amount": 1.0}])
        db.flush()
        wait_for("second merge", lambda: table_rows(up, "account", "total", "n") == [(1, 17.0, 2), (3, 1.0, 1)])
        wait_for("overwrite", lambda: (ow / "_delta_log").exists()
                 and table_rows(ow, "tx_id", "amount") == [("t1", 10.0), ("t2", 7.0), ("t3", 1.0)])
    ops = [h.get("operation") for h in DeltaTable(str(up)).history()]
    assert "MERGE" in ops


def test_sink_schema_evolution_adds_the_new_column(tmp_path):
    out = tmp_path / "t"
    write_deltalake(str(out), pa.table({"id": [1], "name": ["a"]}))
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR, score DOUBLE)")
        db.execute(f"CREATE SINK k AS SELECT * FROM s WITH (connector = 'delta-lake', 'table_uri' = '{out}')")
        db.start()
        db.insert("s", [{"id": 2, "name": "b", "score": 1.5}])
        db.flush()
        wait_for("the row", lambda: len(DeltaTable(str(out)).to_pyarrow_table()) == 2)
    assert "score" in DeltaTable(str(out)).schema().to_arrow().names
    assert table_rows(out, "id", "name", "score") == [(1, "a", None), (2, "b", 1.5)]


def test_bad_options_raise_connector_error_and_leave_nothing(tmp_path):
    with laminardb.open(str(tmp_path / "db")) as db:
        with pytest.raises(laminardb.ConnectorError, match="table_uri"):
            db.execute("CREATE SOURCE d (x BIGINT) WITH (connector = 'delta-lake')")
        db.execute("CREATE SOURCE s (x BIGINT)")
        with pytest.raises(laminardb.ConnectorError, match="table_uri"):
            db.execute("CREATE SINK k AS SELECT x FROM s WITH (connector = 'delta-lake')")
        with pytest.raises(laminardb.ConnectorError, match="write_mode"):
            db.execute(f"CREATE SINK k AS SELECT x FROM s WITH (connector = 'delta-lake', "
                       f"'table_uri' = '{tmp_path / 'x'}', 'write_mode' = 'replace')")
        with pytest.raises(laminardb.ConnectorError, match="unknown scheme 'ftp'"):
            db.execute("CREATE SINK k AS SELECT x FROM s WITH (connector = 'delta-lake', "
                       "'table_uri' = 'ftp://bucket/t')")
        assert [s.name for s in db.sources()] == ["s"] and db.list_sinks() == []


def test_sink_on_s3_read_back_by_deltalake(tmp_path, s3):
    endpoint, bucket = s3
    uri = f"s3://{bucket}/py-{uuid.uuid4().hex}/events"
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE events (event_id VARCHAR, event_type VARCHAR, n BIGINT)")
        db.execute(f"CREATE SINK lake AS SELECT * FROM events WITH (connector = 'delta-lake', 'table_uri' = '{uri}')")
        db.start()
        db.insert("events", [{"event_id": f"e{i}", "event_type": "click" if i % 3 else "view", "n": i}
                             for i in range(100)])
        db.flush()
        wait_for("the commit", lambda: db.sink_metrics("lake").rows_written >= 100)
    opts = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_ACCESS_KEY_ID",
                                        "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    opts["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
    t = DeltaTable(uri, storage_options=opts).to_pyarrow_table()
    assert sorted(t.column("n").to_pylist()) == list(range(100))
    assert sorted(set(t.column("event_type").to_pylist())) == ["click", "view"]


def test_spec_upsert_of_an_insert_only_query_merges_on_its_first_column(tmp_path):
    out = tmp_path / "transactions"
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE transactions (tx_id VARCHAR, account_id BIGINT, amount DOUBLE, tx_type VARCHAR)")
        db.execute(f"""
            CREATE SINK delta_transactions AS
            SELECT * FROM transactions
            WITH (connector = 'delta-lake', 'table_uri' = '{out}', 'write_mode' = 'upsert')""")
        db.start()
        db.insert("transactions", [{"tx_id": "t1", "account_id": 1, "amount": 1.0, "tx_type": "debit"}])
        db.flush()
        wait_for("the first merge", lambda: (out / "_delta_log").exists()
                 and table_rows(out, "tx_id", "amount") == [("t1", 1.0)])
        # A correction of t1 and a new transaction: MERGE on tx_id updates one and inserts one.
        db.insert("transactions", [{"tx_id": "t1", "account_id": 1, "amount": 2.0, "tx_type": "debit"},
                                   {"tx_id": "t2", "account_id": 2, "amount": 5.0, "tx_type": "credit"}])
        db.flush()
        wait_for("the second merge", lambda: table_rows(out, "tx_id", "amount") == [("t1", 2.0), ("t2", 5.0)])


def test_sink_on_azure_read_back_by_deltalake(tmp_path, monkeypatch):
    endpoint = os.environ.get("LAMINAR_TEST_AZURITE_URL")
    if not endpoint:
        raise RuntimeError("LAMINAR_TEST_AZURITE_URL is not set: run scripts/test.sh")
    container = os.environ.get("LAMINAR_TEST_AZURE_CONTAINER", "laminar-test")
    monkeypatch.setenv("AZURE_STORAGE_USE_EMULATOR", "true")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", endpoint)
    uri = f"az://{container}/py-{uuid.uuid4().hex}/inventory"
    _inventory_round_trip(tmp_path, uri, {"AZURE_STORAGE_USE_EMULATOR": "true"})


def test_sink_on_gcs_read_back_by_deltalake(tmp_path, monkeypatch):
    endpoint = os.environ.get("LAMINAR_TEST_GCS_URL")
    if not endpoint:
        raise RuntimeError("LAMINAR_TEST_GCS_URL is not set: run scripts/test.sh")
    bucket = os.environ.get("LAMINAR_TEST_GCS_BUCKET", "laminar-test")
    # The emulator form of a service-account key: no OAuth, requests go to the stand-in.
    key = json.dumps({"gcs_base_url": endpoint, "disable_oauth": True, "client_email": "", "private_key": "",
                      "private_key_id": ""})
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", key)
    uri = f"gs://{bucket}/py-{uuid.uuid4().hex}/inventory"
    _inventory_round_trip(tmp_path, uri, {"google_service_account_key": key})


def _inventory_round_trip(tmp_path, uri, storage_options):
    """50 rows through a Delta sink at `uri`, read back by deltalake with `storage_options`."""
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE inv (product_id BIGINT, quantity INT)")
        db.execute(f"CREATE SINK lake AS SELECT * FROM inv WITH (connector = 'delta-lake', 'table_uri' = '{uri}')")
        db.start()
        db.insert("inv", [{"product_id": i, "quantity": i * 2} for i in range(50)])
        db.flush()
        wait_for("the commit", lambda: db.sink_metrics("lake").rows_written >= 50)
    t = DeltaTable(uri, storage_options=storage_options).to_pyarrow_table()
    assert sorted(t.column("product_id").to_pylist()) == list(range(50))

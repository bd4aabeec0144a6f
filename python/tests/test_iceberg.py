"""Iceberg sink (F-PY-022) from Python, checked against `pyiceberg` as the independent catalog
and reader: a SQL catalog (SQLite) made by pyiceberg, tables made by either side, snapshots read
back row for row."""

from __future__ import annotations

import datetime as dt
import os
import time

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

import laminardb
from iceberg_rest import RestCatalogServer


def wait_for(what, f, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = f()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def catalog(tmp_path):
    return SqlCatalog("default", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}")


def table_rows(cat, name, *columns):
    t = cat.load_table(name)
    if t.current_snapshot() is None:
        return []
    data = t.scan().to_arrow()
    return sorted(tuple(r[c] for c in columns) for r in data.to_pylist())


def test_sink_creates_the_table_pyiceberg_reads_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/catalog.db"
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE orders (order_id BIGINT, customer VARCHAR, amount DOUBLE, ts TIMESTAMP)")
        db.execute(f"""
            CREATE SINK warehouse AS SELECT * FROM orders
            WITH (connector = 'iceberg', 'catalog_uri' = '{uri}', 'table' = 'analytics.enriched_orders',
                  'write_mode' = 'append')""")
        assert [s.name for s in db.sinks()] == ["warehouse"]
        db.start()
        rows = [{"order_id": i, "customer": f"c{i % 7}", "amount": i * 1.5, "ts": dt.datetime(2024, 1, 1) + dt.timedelta(seconds=i)}
                for i in range(500)]
        db.insert("orders", rows[:300])
        db.flush()
        db.insert("orders", rows[300:])
        db.flush()
        wait_for("all rows", lambda: db.metrics().total_events_emitted >= 500)
        wait_for("the snapshots", lambda: db.sink_metrics("warehouse").rows_written >= 500)
        assert db.sink_metrics("warehouse").details["iceberg_commits"] == 2
    cat = catalog(tmp_path)
    assert ("analytics",) in cat.list_namespaces()
    got = table_rows(cat, "analytics.enriched_orders", "order_id", "customer", "amount")
    assert got == sorted((r["order_id"], r["customer"], r["amount"]) for r in rows)
    t = cat.load_table("analytics.enriched_orders")
    snaps = sorted(t.snapshots(), key=lambda s: s.sequence_number)
    assert len(snaps) == 2
    epochs = [int(s.summary["laminardb.epoch"]) for s in snaps]
    assert epochs == sorted(epochs) and len(set(epochs)) == 2
    assert t.current_snapshot().summary["total-records"] == "500"
    assert str(t.schema().find_field("ts").field_type) == "timestamp"


def test_sink_appends_to_a_table_pyiceberg_created(tmp_path):
    cat = catalog(tmp_path)
    cat.create_namespace("lake")
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string()), pa.field("note", pa.string())])
    t = cat.create_table("lake.people", schema=schema)
    t.append(pa.table({"id": [1], "name": ["from pyiceberg"], "note": ["x"]}, schema=schema))
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)")
        db.execute(f"""
            CREATE SINK k AS SELECT * FROM s
            WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{tmp_path}/catalog.db', 'table' = 'lake.people')""")
        db.start()
        db.insert("s", [{"id": 2, "name": "from laminardb"}])
        db.flush()
        wait_for("the row", lambda: len(table_rows(cat, "lake.people", "id")) == 2)
        # Another writer appends while the sink runs: the sink's next snapshot builds on it.
        cat.load_table("lake.people").append(pa.table({"id": [3], "name": ["again"], "note": [None]}, schema=schema))
        db.insert("s", [{"id": 4, "name": "after"}])
        db.flush()
        wait_for("all rows", lambda: len(table_rows(cat, "lake.people", "id")) == 4)
    assert table_rows(cat, "lake.people", "id", "name", "note") == [
        (1, "from pyiceberg", "x"), (2, "from laminardb", None), (3, "again", None), (4, "after", None)]


def test_sink_creates_its_table_in_a_catalog_pyiceberg_made(tmp_path):
    cat = catalog(tmp_path)
    cat.create_namespace("sales", {"location": f"file://{tmp_path}/sales-warehouse"})
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (region VARCHAR, amount BIGINT)")
        db.execute(f"""
            CREATE SINK k AS SELECT * FROM s
            WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{tmp_path}/catalog.db', 'table' = 'sales.raw')""")
        db.start()
        db.insert("s", [{"region": "eu", "amount": 3}, {"region": "us", "amount": 4}])
        db.flush()
        wait_for("the snapshot", lambda: cat.table_exists("sales.raw")
                 and len(table_rows(cat, "sales.raw", "region")) == 2)
    assert ("sales", "raw") in cat.list_tables("sales")
    t = cat.load_table("sales.raw")
    # The namespace's location decides where the table goes, as for tables pyiceberg creates.
    assert t.location() == f"file://{tmp_path}/sales-warehouse/raw"
    assert table_rows(cat, "sales.raw", "region", "amount") == [("eu", 3), ("us", 4)]


def test_schema_evolution_adds_the_query_s_new_column(tmp_path):
    cat = catalog(tmp_path)
    cat.create_namespace("lake")
    old = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])
    cat.create_table("lake.scores", schema=old).append(pa.table({"id": [1], "name": ["a"]}, schema=old))
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR, score DOUBLE)")
        db.execute(f"""
            CREATE SINK k AS SELECT * FROM s
            WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{tmp_path}/catalog.db', 'table' = 'lake.scores')""")
        db.start()
        db.insert("s", [{"id": 2, "name": "b", "score": 1.5}])
        db.flush()
        wait_for("the row", lambda: len(table_rows(cat, "lake.scores", "id")) == 2)
        assert db.sink_metrics("k").details["schema_changes"] == 1
    t = cat.load_table("lake.scores")
    assert [f.name for f in t.schema().fields] == ["id", "name", "score"]
    assert len(t.schemas()) == 2
    assert table_rows(cat, "lake.scores", "id", "name", "score") == [(1, "a", None), (2, "b", 1.5)]


def test_partition_spec_identity_day_and_bucket(tmp_path):
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE tx (tx_id BIGINT, region VARCHAR, amount DOUBLE, ts TIMESTAMP)")
        db.execute(f"""
            CREATE SINK k AS SELECT * FROM tx
            WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{tmp_path}/catalog.db',
                  'table' = 'production.transactions', 'partition_by' = 'region, day(ts), bucket(4, tx_id)')""")
        db.start()
        rows = [{"tx_id": i, "region": ("eu", "us", "apac")[i % 3], "amount": float(i),
                 "ts": dt.datetime(2024, 3, 1) + dt.timedelta(hours=7 * i)} for i in range(60)]
        db.insert("tx", rows)
        db.flush()
        wait_for("the snapshot", lambda: db.sink_metrics("k").rows_written >= 60)
    cat = catalog(tmp_path)
    t = cat.load_table("production.transactions")
    assert [(f.name, str(f.transform)) for f in t.spec().fields] == [
        ("region", "identity"), ("ts_day", "day"), ("tx_id_bucket", "bucket[4]")]
    assert table_rows(cat, "production.transactions", "tx_id", "region") == sorted(
        (r["tx_id"], r["region"]) for r in rows)
    eu = t.scan(row_filter="region == 'eu'").to_arrow()
    assert sorted(eu.column("tx_id").to_pylist()) == [r["tx_id"] for r in rows if r["region"] == "eu"]
    files = t.inspect.files().to_pylist()
    # Every data file holds one partition: one region, one day, one bucket.
    assert len(files) > 3 * 18
    assert all("/region=" in f["file_path"] and "/ts_day=" in f["file_path"] for f in files)


def test_upsert_replaces_rows_by_key_in_a_table_pyiceberg_made(tmp_path):
    cat = catalog(tmp_path)
    cat.create_namespace("lake")
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])
    t = cat.create_table("lake.accounts", schema=schema)
    # Written before by appends: id 1 twice.
    t.append(pa.table({"id": [1, 1, 2], "name": ["old", "older", "keep"]}, schema=schema))
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (id BIGINT PRIMARY KEY, name VARCHAR)")
        db.execute(f"""
            CREATE SINK k AS SELECT * FROM s WHERE name <> 'closed'
            WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{tmp_path}/catalog.db', 'table' = 'lake.accounts',
                  'write_mode' = 'upsert')""")
        db.start()
        db.insert("s", [{"id": 1, "name": "new"}, {"id": 5, "name": "five"}])
        db.flush()
        wait_for("the upsert", lambda: table_rows(cat, "lake.accounts", "id", "name")
                 == [(1, "new"), (2, "keep"), (5, "five")])
        # An update, and a row leaving the query's result (a delete of key 1).
        db.insert("s", [{"id": 5, "name": "FIVE"}, {"id": 1, "name": "closed"}])
        db.flush()
        wait_for("the second upsert", lambda: table_rows(cat, "lake.accounts", "id", "name")
                 == [(2, "keep"), (5, "FIVE")])
        m = db.sink_metrics("k")
        assert m.details["iceberg_retired_rows"] == 4
    t = cat.load_table("lake.accounts")
    files = t.inspect.files().to_pylist()
    # content 0: data, 1: position deletes.
    assert sorted(f["content"] for f in files) == [0, 0, 0, 1, 1]
    assert [s.summary.operation.value for s in sorted(t.snapshots(), key=lambda s: s.sequence_number)] == [
        "append", "overwrite", "overwrite"]


def test_upsert_of_an_updating_aggregate_equals_the_aggregate(tmp_path):
    """Random inserts, updates and deletes over many commits: the table read by pyiceberg holds
    exactly the aggregate computed here."""
    import random

    rnd = random.Random(7)
    live: dict[int, tuple[str, int]] = {}
    with laminardb.open(str(tmp_path / "db")) as db:
        # A row with amount 0 leaves the aggregate (a delete); accounts empty out and come back.
        db.execute("CREATE SOURCE tx (id BIGINT PRIMARY KEY, account VARCHAR, amount BIGINT)")
        db.execute(f"""
            CREATE SINK balances AS SELECT account, SUM(amount) AS balance, COUNT(*) AS n FROM tx
            WHERE amount <> 0 GROUP BY account
            WITH (connector = 'iceberg', 'catalog_uri' = 'sqlite:///{tmp_path}/catalog.db', 'table' = 'bank.balances',
                  'write_mode' = 'upsert', 'partition_by' = 'bucket(4, account)')""")
        db.start()
        for _ in range(15):
            batch: dict[int, dict] = {}
            for _ in range(rnd.randint(1, 40)):
                i = rnd.randrange(200)
                if i in live and rnd.random() < 0.3:
                    acc, _ = live.pop(i)
                    batch[i] = {"id": i, "account": acc, "amount": 0}
                else:
                    live[i] = (f"acct{rnd.randrange(25)}", rnd.randrange(1, 100) * rnd.choice((-1, 1)))
                    batch[i] = {"id": i, "account": live[i][0], "amount": live[i][1]}
            db.insert("tx", list(batch.values()))
            db.flush()
        want: dict[str, tuple[int, int]] = {}
        for acc, amt in live.values():
            b, n = want.get(acc, (0, 0))
            want[acc] = (b + amt, n + 1)
        expected = sorted((a, b, n) for a, (b, n) in want.items())
        cat = catalog(tmp_path)
        wait_for("the balances", lambda: cat.table_exists("bank.balances")
                 and table_rows(cat, "bank.balances", "account", "balance", "n") == expected)
    files = cat.load_table("bank.balances").inspect.files().to_pylist()
    assert any(f["content"] == 1 for f in files), "updates went in as position deletes"


def test_rest_catalog_with_a_token_appends_and_upserts(tmp_path):
    with RestCatalogServer(catalog(tmp_path), prefix="catalogs/main", token="s3cr3t") as srv:
        with laminardb.open(str(tmp_path / "db")) as db:
            db.execute("CREATE SOURCE orders (order_id BIGINT, customer VARCHAR, amount DOUBLE)")
            opts = f"connector = 'iceberg', 'catalog_uri' = '{srv.uri}', 'catalog.token' = 's3cr3t'"
            db.execute(f"""
                CREATE SINK raw AS SELECT * FROM orders
                WITH ({opts}, 'table' = 'shop.orders', 'partition_by' = 'bucket(2, order_id)')""")
            db.execute(f"""
                CREATE SINK per_customer AS SELECT customer, SUM(amount) AS spent FROM orders GROUP BY customer
                WITH ({opts}, 'table' = 'shop.per_customer', 'write_mode' = 'upsert')""")
            db.start()
            db.insert("orders", [{"order_id": i, "customer": f"c{i % 3}", "amount": 1.0} for i in range(30)])
            db.flush()
            db.insert("orders", [{"order_id": 100, "customer": "c0", "amount": 5.0}])
            db.flush()
            wait_for("both sinks", lambda: db.sink_metrics("raw").details.get("iceberg_commits") == 2
                     and db.sink_metrics("per_customer").details.get("iceberg_commits") == 2)
        # Read back through the same REST server by pyiceberg's REST client.
        from pyiceberg.catalog.rest import RestCatalog
        rest = RestCatalog("rest", uri=srv.uri, token="s3cr3t")
        assert table_rows(rest, "shop.per_customer", "customer", "spent") == [("c0", 15.0), ("c1", 10.0), ("c2", 10.0)]
        assert len(table_rows(rest, "shop.orders", "order_id")) == 31
        assert [str(f.transform) for f in rest.load_table("shop.orders").spec().fields] == ["bucket[2]"]
        paths = {p for _, p in srv.requests}
        assert "/v1/catalogs/main/namespaces/shop/tables/per_customer" in paths
        assert any(m == "POST" and p.endswith("/tables/per_customer") for m, p in srv.requests), "commits went by REST"
    # The catalog underneath holds what the server committed.
    assert table_rows(catalog(tmp_path), "shop.per_customer", "customer", "spent") == [
        ("c0", 15.0), ("c1", 10.0), ("c2", 10.0)]


def test_rest_catalog_oauth2_client_credentials(tmp_path):
    with RestCatalogServer(catalog(tmp_path), token="tok-1", client=("laminar", "pw")) as srv:
        with laminardb.open(str(tmp_path / "db")) as db:
            db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)")
            db.execute(f"""
                CREATE SINK k AS SELECT * FROM s
                WITH (connector = 'iceberg', 'catalog_uri' = '{srv.uri}', 'table' = 'a.b',
                      'catalog.credential' = 'laminar:pw')""")
            db.start()
            db.insert("s", [{"id": 1, "name": "x"}])
            db.flush()
            wait_for("the row", lambda: db.sink_metrics("k").rows_written >= 1)
        assert ("POST", "/v1/oauth/tokens") in srv.requests
        assert table_rows(catalog(tmp_path), "a.b", "id", "name") == [(1, "x")]
        with laminardb.open(str(tmp_path / "db2")) as db:
            db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR)")
            db.execute(f"""
                CREATE SINK k AS SELECT * FROM s
                WITH (connector = 'iceberg', 'catalog_uri' = '{srv.uri}', 'table' = 'a.b',
                      'catalog.credential' = 'laminar:wrong')""")
            with pytest.raises(laminardb.LaminarError, match="catalog.credential"):
                db.start()


def test_tables_on_s3_read_back_by_pyiceberg(tmp_path, s3):
    endpoint, bucket = s3
    warehouse = f"s3://{bucket}/iceberg-{time.time_ns()}"
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE readings (sensor VARCHAR, value DOUBLE, ts TIMESTAMP)")
        opts = (f"connector = 'iceberg', 'catalog_uri' = 'sqlite:///{tmp_path}/catalog.db', "
                f"'warehouse' = '{warehouse}'")
        db.execute(f"CREATE SINK raw AS SELECT * FROM readings WITH ({opts}, 'table' = 'iot.raw', "
                   "'partition_by' = 'sensor')")
        db.execute(f"""CREATE SINK latest AS SELECT sensor, MAX(value) AS peak, COUNT(*) AS n FROM readings
                       GROUP BY sensor WITH ({opts}, 'table' = 'iot.peaks', 'write_mode' = 'upsert')""")
        db.start()
        t0 = dt.datetime(2024, 5, 1)
        for step in range(3):
            db.insert("readings", [{"sensor": f"s{i % 4}", "value": float(step * 10 + i),
                                    "ts": t0 + dt.timedelta(minutes=step)} for i in range(20)])
            db.flush()
        wait_for("three commits each", lambda: db.sink_metrics("raw").details.get("iceberg_commits") == 3
                 and db.sink_metrics("latest").details.get("iceberg_commits") == 3)
    cat = SqlCatalog("default", uri=f"sqlite:///{tmp_path}/catalog.db", **{
        "s3.endpoint": endpoint, "s3.access-key-id": "test", "s3.secret-access-key": "test",
        "s3.region": "us-east-1"})
    t = cat.load_table("iot.raw")
    assert t.metadata_location.startswith(f"{warehouse}/iot.db/raw/metadata/")
    assert len(table_rows(cat, "iot.raw", "sensor", "value")) == 60
    assert table_rows(cat, "iot.peaks", "sensor", "peak", "n") == [
        (f"s{k}", float(20 + max(i for i in range(20) if i % 4 == k)), 15) for k in range(4)]


def test_glue_catalog_on_the_aws_stand_in(tmp_path, s3):
    endpoint, bucket = s3
    database = f"glue_{time.time_ns()}"
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (id BIGINT PRIMARY KEY, name VARCHAR)")
        opts = (f"connector = 'iceberg', 'catalog.type' = 'glue', 'catalog_uri' = '{endpoint}', "
                f"'warehouse' = 's3://{bucket}/{database}'")
        db.execute(f"CREATE SINK people AS SELECT * FROM s WITH ({opts}, 'table' = '{database}.people', "
                   "'write_mode' = 'upsert')")
        db.start()
        db.insert("s", [{"id": i, "name": f"n{i}"} for i in range(10)])
        db.flush()
        wait_for("the first commit", lambda: db.sink_metrics("people").details.get("iceberg_commits") == 1)
        from pyiceberg.catalog.glue import GlueCatalog
        glue = GlueCatalog("glue", **{
            "glue.endpoint": endpoint, "glue.region": "us-east-1", "glue.access-key-id": "test",
            "glue.secret-access-key": "test", "s3.endpoint": endpoint, "s3.access-key-id": "test",
            "s3.secret-access-key": "test", "s3.region": "us-east-1"})
        t = glue.load_table(f"{database}.people")
        # Another writer (pyiceberg through Glue) appends a row with key 3: the sink's next
        # commit finds the Glue table moved, rebuilds on it and retires that row with its own.
        t.append(pa.table({"id": pa.array([3], pa.int64()), "name": ["from pyiceberg"]}))
        db.insert("s", [{"id": 3, "name": "three"}, {"id": 4, "name": "four"}])
        db.flush()
        wait_for("the second commit", lambda: db.sink_metrics("people").details.get("iceberg_commits") == 2)
        assert db.sink_metrics("people").details["iceberg_commit_conflicts"] >= 1
    want = sorted([(i, f"n{i}") for i in range(10) if i not in (3, 4)] + [(3, "three"), (4, "four")])
    assert table_rows(glue, f"{database}.people", "id", "name") == want
    import boto3
    params = boto3.client("glue", endpoint_url=endpoint, region_name="us-east-1").get_table(
        DatabaseName=database, Name="people")["Table"]["Parameters"]
    assert params["table_type"] == "ICEBERG"
    assert params["metadata_location"].startswith(f"s3://{bucket}/{database}/{database}.db/people/metadata/")
    assert params["previous_metadata_location"] != params["metadata_location"]


def test_sql_catalog_in_postgres(tmp_path):
    uri = os.environ.get("LAMINAR_TEST_POSTGRES_URI")
    if not uri:
        raise RuntimeError("LAMINAR_TEST_POSTGRES_URI is not set: run scripts/test.sh")
    name = f"cat{time.time_ns()}"
    # pyiceberg makes the catalog and the table; the sink writes through the same Postgres tables.
    cat = SqlCatalog(name, uri=uri.replace("postgres://", "postgresql+psycopg2://"), warehouse=f"file://{tmp_path}")
    cat.create_namespace("crm")
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("email", pa.string())])
    cat.create_table("crm.contacts", schema=schema)
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (id BIGINT PRIMARY KEY, email VARCHAR)")
        db.execute(f"""
            CREATE SINK k AS SELECT * FROM s
            WITH (connector = 'iceberg', 'catalog_uri' = '{uri}', 'catalog.name' = '{name}',
                  'table' = 'crm.contacts', 'write_mode' = 'upsert')""")
        db.execute(f"""
            CREATE SINK made AS SELECT id FROM s
            WITH (connector = 'iceberg', 'catalog_uri' = '{uri}', 'catalog.name' = '{name}',
                  'table' = 'crm.ids', 'write_mode' = 'upsert', 'warehouse' = '{tmp_path}/wh')""")
        db.start()
        db.insert("s", [{"id": 1, "email": "a@x"}, {"id": 2, "email": "b@x"}])
        db.flush()
        db.insert("s", [{"id": 2, "email": "b@y"}])
        db.flush()
        wait_for("two commits", lambda: db.sink_metrics("k").details.get("iceberg_commits") == 2)
        wait_for("the second table", lambda: db.sink_metrics("made").details.get("iceberg_commits", 0) >= 1)
    assert table_rows(cat, "crm.contacts", "id", "email") == [(1, "a@x"), (2, "b@y")]
    assert table_rows(cat, "crm.ids", "id") == [(1,), (2,)]
    assert cat.load_table("crm.ids").location() == f"file://{tmp_path}/wh/crm.db/ids"


def test_bad_options_raise_connector_error_and_leave_nothing(tmp_path):
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute("CREATE SOURCE s (id BIGINT)")
        cases = [
            ("'table' = 'a.b'", "catalog_uri"),
            (f"'catalog_uri' = 'sqlite:///{tmp_path}/c.db'", "table"),
            (f"'catalog_uri' = 'sqlite:///{tmp_path}/c.db', 'table' = 'a.b', 'write_mod' = 'append'", "write_mod"),
            (f"'catalog_uri' = 'sqlite:///{tmp_path}/c.db', 'table' = 'a.b', 'partition_by' = 'day(nope)'", "nope"),
            (f"'catalog_uri' = 'sqlite:///{tmp_path}/c.db', 'table' = 'a.b', 'write_mode' = 'upsert', "
             "'merge_key_columns' = 'idd'", "idd"),
            (f"'catalog_uri' = 'sqlite:///{tmp_path}/c.db', 'table' = 'a.b', 'catalog.token' = 't'", "REST"),
            ("'catalog_uri' = 'http://127.0.0.1:1', 'table' = 'a.b', 'catalog.credential' = 'nocolon'",
             "client_id:client_secret"),
        ]
        for opts, needle in cases:
            with pytest.raises(laminardb.ConnectorError, match=needle):
                db.execute(f"CREATE SINK k AS SELECT * FROM s WITH (connector = 'iceberg', {opts})")
        assert db.sinks() == []

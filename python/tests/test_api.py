"""The core Python API: connection, DDL, ingestion forms, queries, subscriptions, errors."""

import asyncio
import threading
import time

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import laminardb


def rows(result):
    return sorted(tuple(r.values()) for r in result.to_dicts())


def test_open_config_and_repr():
    cfg = laminardb.LaminarConfig(buffer_size=128, workers=1)
    assert cfg.buffer_size == 128 and cfg.workers == 1 and cfg.storage_dir is None
    assert "buffer_size=128" in repr(cfg) and "workers=1" in repr(cfg)
    assert laminardb.Config is laminardb.LaminarConfig
    with pytest.raises(AttributeError):
        cfg.buffer_size = 5
    with laminardb.connect(":memory:", config=cfg) as db:
        assert db.config is cfg
        assert db.pipeline_state == "Created"
        assert "Created" in repr(db)
    assert db.is_closed


def test_catalog_persists_across_open(tmp_path):
    path = str(tmp_path / "db")
    with laminardb.open(path) as db:
        db.execute("CREATE SOURCE s (a BIGINT, ts TIMESTAMP, WATERMARK FOR ts)")
        db.execute("CREATE MATERIALIZED VIEW mv AS SELECT a, COUNT(*) AS n FROM s GROUP BY a")
        with pytest.raises(laminardb.ConnectionError) as e:
            laminardb.open(path)
        assert e.value.code == laminardb.codes.CONNECTION_IN_USE
    with laminardb.open(path) as db:
        assert db.list_tables() == ["s"]
        assert db.list_streams() == ["mv"]
        assert [m.name for m in db.materialized_views()] == ["mv"]
        info = db.sources()[0]
        assert info.watermark_column == "ts"
        assert info.schema.names == ["a", "ts"]
        assert info.schema.field("ts").type == pa.timestamp("us")


def test_execute_results(db):
    r = db.execute("CREATE SOURCE s (a INT, b VARCHAR)")
    assert (r.result_type, r.ddl_type, r.ddl_object) == ("ddl", "CREATE SOURCE", "s")
    r = db.execute("INSERT INTO s VALUES (1, 'x'), (2, 'y')")
    assert r.result_type == "rows_affected" and r.rows_affected == 2
    r = db.execute("SELECT * FROM s ORDER BY a")
    assert r.result_type == "query"
    assert r.to_query_result().to_dicts() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    r = db.execute("SHOW SOURCES")
    assert r.result_type == "metadata"
    assert r.to_query_result().to_dicts()[0]["name"] == "s"
    r = db.execute("CREATE STREAM st AS SELECT a FROM s")
    assert r.ddl_type == "CREATE STREAM"
    assert "ddl_type='CREATE STREAM'" in repr(r)
    with pytest.raises(laminardb.QueryError):
        db.execute("CREATE SOURCE t (a INT)").to_query_result()


def test_every_insert_form(db):
    db.execute("CREATE SOURCE s (id BIGINT, name VARCHAR, score DOUBLE)")
    assert db.insert("s", pa.record_batch({"id": [1], "name": ["a"], "score": [1.5]})) == 1
    assert db.insert("s", pa.table({"id": [2, 3], "name": ["b", "c"], "score": [2.0, 3.0]})) == 2
    assert db.insert("s", pd.DataFrame({"id": [4], "name": ["d"], "score": [4.0]})) == 1
    assert db.insert("s", pl.DataFrame({"id": [5], "name": ["e"], "score": [5.0]})) == 1
    assert db.insert("s", {"id": 6, "name": "f", "score": 6.0}) == 1
    assert db.insert("s", {"id": [7, 8], "name": ["g", "h"], "score": [7.0, None]}) == 2
    assert db.insert("s", [{"id": 9, "name": "i"}, {"id": 10, "score": 10.0}]) == 2
    assert db.insert_json("s", '[{"id": 11, "name": "k", "score": 1}]') == 1
    assert db.insert_csv("s", "id,name,score\n12,l,2.5\n") == 1
    assert db.insert("s", []) == 0
    result = db.query("SELECT COUNT(*) AS n, SUM(id) AS ids, COUNT(score) AS scored FROM s")
    assert result.to_dicts() == [{"n": 12, "ids": 78, "scored": 10}]


def test_type_mismatch_inserts_nothing(db):
    db.execute("CREATE SOURCE s (id BIGINT NOT NULL, price DOUBLE)")
    with pytest.raises(laminardb.SchemaError) as e:
        db.insert("s", pa.table({"id": [1, 2], "price": ["x", "y"]}))
    assert "'price'" in str(e.value)
    assert e.value.code == laminardb.codes.SCHEMA_MISMATCH
    with pytest.raises(laminardb.SchemaError) as e:
        db.insert("s", [{"id": 1, "price": 1.0}, {"id": None, "price": 2.0}])
    assert "'id'" in str(e.value)
    with pytest.raises(laminardb.SchemaError):
        db.insert("s", {"nope": [1]})
    with pytest.raises(laminardb.IngestionError):
        db.insert("s", 42)
    assert db.query("SELECT COUNT(*) AS n FROM s").to_dicts() == [{"n": 0}]


def test_query_result_conversions(trades):
    trades.insert("trades", [{"symbol": "A", "price": 1.0, "qty": 2}, {"symbol": "B", "price": 5.0, "qty": 1}])
    trades.flush()
    r = trades.query("SELECT symbol, n, q, hi FROM agg ORDER BY symbol")
    assert r.num_rows == 2 and len(r) == 2 and r.num_columns == 4
    assert r.columns == ["symbol", "n", "q", "hi"]
    assert r.schema.field("n").type == pa.int64()
    assert r.to_arrow().column("q").to_pylist() == [2, 1]
    assert r.to_pandas()["hi"].tolist() == [1.0, 5.0]
    assert r.to_polars()["symbol"].to_list() == ["A", "B"]
    assert r.df().shape == (2, 4) and r.pl().shape == (2, 4) and r.arrow().num_rows == 2
    assert r.fetchone() == ("A", 1, 2, 1.0)
    assert r.fetchmany(5) == [("B", 1, 1, 5.0)]
    assert r.fetchall() == []
    assert list(r) == [("A", 1, 2, 1.0), ("B", 1, 1, 5.0)]
    assert pa.table(r).num_rows == 2  # __arrow_c_stream__
    assert "<table" in r._repr_html_()
    assert trades.sql("SELECT 1 AS one").to_dicts() == [{"one": 1}]
    assert "IncrementalAggregate" in trades.explain("SELECT symbol, COUNT(*) FROM trades GROUP BY symbol")


def test_subscription_sync_timeout_try_next_and_cancel(trades):
    sub = trades.subscribe_stream("agg")
    assert sub.schema.names == ["symbol", "n", "q", "hi"]
    assert sub.try_next() is None
    trades.insert("trades", {"symbol": "A", "price": 2.0, "qty": 3})
    first = sub.next_timeout(5000)
    assert first.to_dicts() == [{"symbol": "A", "n": 1, "q": 3, "hi": 2.0}]
    assert isinstance(first.epoch, int)
    with pytest.raises(laminardb.SubscriptionError) as e:
        sub.next_timeout(50)
    assert e.value.code == laminardb.codes.SUBSCRIPTION_TIMEOUT
    threading.Timer(0.1, sub.cancel).start()
    started = time.monotonic()
    assert list(sub) == []
    assert time.monotonic() - started < 5
    assert not sub.is_active


def test_subscription_ends_at_shutdown(trades):
    sub = trades.subscribe_stream("agg")
    trades.insert("trades", {"symbol": "Z", "price": 1.0, "qty": 1})
    got = []

    def consume():
        for item in sub:
            got.extend(item.to_dicts())

    t = threading.Thread(target=consume)
    t.start()
    trades.flush()
    time.sleep(0.05)
    trades.shutdown()
    t.join(5)
    assert not t.is_alive()
    assert got == [{"symbol": "Z", "n": 1, "q": 1, "hi": 1.0}]
    assert trades.pipeline_state == "Stopped"


async def test_async_subscription(trades):
    sub = await trades.subscribe_stream_async("agg")
    trades.insert("trades", {"symbol": "A", "price": 9.0, "qty": 1})
    item = await asyncio.wait_for(sub.next(), 5)
    assert item.to_dicts()[0]["hi"] == 9.0
    trades.insert("trades", {"symbol": "A", "price": 10.0, "qty": 1})
    async for item in sub:
        assert item.to_dicts()[0]["n"] == 2
        break
    sub.cancel()


def test_callback_subscription(trades):
    seen, errors = [], []
    done = threading.Event()

    def on_data(result):
        seen.extend(result.to_dicts())
        done.set()

    cb = trades.subscribe_stream_callback("agg", on_data, errors.append)
    trades.insert("trades", {"symbol": "C", "price": 3.0, "qty": 7})
    assert done.wait(5)
    cb.cancel()
    assert seen == [{"symbol": "C", "n": 1, "q": 7, "hi": 3.0}]
    assert errors == []
    assert not cb.is_active


def test_writer(db):
    db.execute("CREATE SOURCE ev (v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")
    with db.writer("ev") as w:
        assert w.insert([{"v": 1, "ts": "2024-01-01T00:00:10"}]) == 1
        w.watermark(1_704_067_300_000)
        w.flush()
    assert w.is_closed
    with pytest.raises(laminardb.IngestionError) as e:
        w.insert({"v": 2})
    assert e.value.code == laminardb.codes.WRITER_CLOSED
    assert db.source_metrics("ev").watermark == 1_704_067_300_000
    assert db.pipeline_watermark == 1_704_067_300_000


def test_create_table_and_schema(db):
    schema = pa.schema([("id", pa.int64(), False), ("name", pa.string()), ("at", pa.timestamp("ms"))])
    r = db.create_table("people", schema)
    assert r.ddl_object == "people"
    s = db.schema("people")
    assert s.names == ["id", "name", "at"]
    assert not s.field("id").nullable
    db.insert("people", pa.table({"id": [1], "name": ["x"], "at": pa.array([1_000], pa.timestamp("ms"))}))
    assert db.query("SELECT CAST(at AS BIGINT) AS us FROM people").to_dicts() == [{"us": 1_000_000}]


def test_metrics_and_topology(trades):
    trades.execute("CREATE SINK IF NOT EXISTS nope AS SELECT * FROM agg WITH (connector = 'none')") if False else None
    trades.insert("trades", [{"symbol": "A", "price": 1.0, "qty": 1}] * 3)
    trades.flush()
    m = trades.metrics()
    assert m.state == "Running" and m.total_events_ingested == 3 and m.total_batches == 1
    assert m.source_count == 1 and m.stream_count == 1 and m.sink_count == 0
    assert trades.total_events_processed == 3
    assert trades.source_count == 1 and trades.sink_count == 0 and trades.active_query_count == 1
    assert not trades.is_checkpoint_enabled
    sm = trades.source_metrics("trades")
    assert sm.name == "trades" and sm.total_events == 3 and sm.capacity == 65536 and sm.pending == 0
    assert not sm.is_backpressured and sm.utilization == 0.0
    assert trades.source_metrics("missing") is None
    assert [s.name for s in trades.all_source_metrics()] == ["trades"]
    st = trades.stream_metrics("agg")
    assert st.current_rows == 1 and st.dropped == 0
    assert [s.name for s in trades.all_stream_metrics()] == ["agg"]
    topo = trades.topology()
    assert [(n.name, n.node_type) for n in topo.nodes] == [("trades", "source"), ("agg", "stream")]
    assert [(e.from_node, e.to_node) for e in topo.edges] == [("trades", "agg")]


def test_connector_errors(db):
    with pytest.raises(laminardb.ConnectorError) as e:
        db.execute("CREATE SOURCE k (a INT) WITH (connector = 'nosuch')")
    assert e.value.code == laminardb.codes.CONNECTOR_CONFIG
    assert isinstance(e.value, laminardb.LaminarError)
    with pytest.raises(laminardb.ConnectorError):
        db.execute("CREATE SINK out AS SELECT 1 WITH (connector = 'nosuch')")
    assert db.list_tables() == [] and db.list_sinks() == []


def test_errors_have_codes(db):
    with pytest.raises(laminardb.QueryError) as e:
        db.execute("CREATE STREAM x AS SELEC 1")
    assert e.value.code == laminardb.codes.SQL_PARSE_ERROR
    with pytest.raises(laminardb.QueryError) as e:
        db.query("SELECT * FROM missing")
    assert e.value.code in (laminardb.codes.TABLE_NOT_FOUND, laminardb.codes.QUERY_FAILED)
    with pytest.raises(laminardb.SubscriptionError) as e:
        db.subscribe_stream("missing")
    assert e.value.code == laminardb.codes.SUBSCRIPTION_FAILED


def test_everything_after_close_raises(db):
    db.execute("CREATE SOURCE s (a INT)")
    db.close()
    calls = [
        lambda: db.execute("SHOW SOURCES"),
        lambda: db.query("SELECT 1"),
        lambda: db.insert("s", {"a": 1}),
        lambda: db.sources(),
        lambda: db.start(),
        lambda: db.metrics(),
        lambda: db.subscribe_stream("x"),
        lambda: db.pipeline_state,
    ]
    for call in calls:
        with pytest.raises(laminardb.ConnectionError) as e:
            call()
        assert e.value.code == laminardb.codes.CONNECTION_CLOSED
    db.close()  # idempotent


async def test_async_context_manager():
    async with laminardb.open(":memory:") as db:
        db.execute("CREATE SOURCE s (a INT)")
    assert db.is_closed


def test_subscribe_sql_and_stream(trades):
    trades.insert("trades", {"symbol": "A", "price": 1.0, "qty": 4})
    sub = trades.subscribe("SELECT symbol, SUM(qty) * 10 AS q10 FROM trades GROUP BY symbol")
    assert sub.next_timeout(5000).to_dicts() == [{"symbol": "A", "q10": 40}]
    trades.insert("trades", {"symbol": "B", "price": 1.0, "qty": 500})
    assert sub.next_timeout(5000).to_dicts() == [{"symbol": "B", "q10": 5000}]
    assert trades.list_streams() == ["agg"]
    sub.cancel()
    with pytest.raises(laminardb.QueryError):
        trades.subscribe("CREATE SOURCE x (a INT)")
    trades.flush()
    parts = list(trades.stream("SELECT symbol, qty FROM trades ORDER BY symbol"))
    assert [r for p in parts for r in p.to_dicts()] == [{"symbol": "A", "qty": 4}, {"symbol": "B", "qty": 500}]
    assert trades.query_stream("agg", filter="symbol = 'B'").to_dicts()[0]["q"] == 500
    r = trades.query("SELECT * FROM agg")
    assert r.num_batches >= 1 and r.to_df().shape == (2, 4)


async def test_subscribe_async_sql(trades):
    sub = await trades.subscribe_async("SELECT COUNT(*) AS n FROM trades")
    trades.insert("trades", {"symbol": "A", "price": 1.0, "qty": 1})
    assert (await asyncio.wait_for(sub.next(), 5)).to_dicts() == [{"n": 1}]
    sub.cancel()


@pytest.mark.parametrize("call", [
    "db.subscribe_stream('t').next()",
    "db.query('SELECT COUNT(*) AS n FROM generate_series(1, 100000000000)')",
])
def test_ctrl_c_interrupts_a_blocking_wait(tmp_path, call):
    import signal
    import subprocess
    import sys

    script = tmp_path / "block.py"
    script.write_text(
        "import laminardb, sys, time\n"
        "db = laminardb.open(':memory:')\n"
        "db.execute('CREATE SOURCE s (a INT)')\n"
        "db.execute('CREATE STREAM t AS SELECT a FROM s')\n"
        "db.start()\n"
        "print('ready', flush=True)\n"
        "try:\n"
        f"    {call}\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', time.time(), flush=True)\n"
        "    sys.exit(3)\n"
    )
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    sent = time.time()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 3 and "interrupted" in out, out
    # The wait notices Ctrl-C within 100 ms (it checks every 20 ms).
    reacted = float(out.split()[-1]) - sent
    assert reacted < 0.1, f"took {reacted:.3f}s"


def test_show_prints_rows(trades, capsys):
    trades.insert("trades", {"symbol": "Q", "price": 2.0, "qty": 1})
    trades.flush()
    trades.query("SELECT symbol, n FROM agg").show()
    out = capsys.readouterr().out
    assert "symbol" in out and "Q" in out


def test_single_row_dicts_fast_path_and_fallbacks(db):
    import datetime

    db.execute("CREATE SOURCE r (i INT, b BIGINT, f REAL, d DOUBLE, ok BOOLEAN, s VARCHAR, raw BYTEA, ts TIMESTAMP)")
    db.execute("CREATE STREAM c AS SELECT COUNT(*) AS n, SUM(b) AS total FROM r")
    db.start()
    for k in range(1000):
        assert db.insert("r", {"i": k, "b": k, "f": 0.5, "d": 1, "ok": k % 2 == 0, "s": f"x{k}", "raw": b"\x00"}) == 1
    # values outside the fast path take the pyarrow path
    assert db.insert("r", {"b": 5, "ts": datetime.datetime(2024, 1, 1, 12, 0)}) == 1
    assert db.insert("r", {"b": None, "s": None}) == 1
    with pytest.raises(laminardb.SchemaError) as e:
        db.insert("r", {"b": 1, "nope": 2})
    assert "'nope'" in str(e.value)
    with pytest.raises(laminardb.SchemaError):
        db.insert("r", {"i": "not a number"})
    db.flush()
    assert db.query("SELECT * FROM c").to_dicts() == [{"n": 1002, "total": sum(range(1000)) + 5}]
    row = db.query("SELECT i, f, d, ok, s, raw FROM r WHERE i = 7").to_dicts()
    assert row == [{"i": 7, "f": 0.5, "d": 1.0, "ok": False, "s": "x7", "raw": b"\x00"}]
    ts = db.query("SELECT ts FROM r WHERE ts IS NOT NULL").to_dicts()
    assert ts == [{"ts": datetime.datetime(2024, 1, 1, 12, 0)}]


def test_compatibility_helpers(trades):
    trades.insert("trades", [{"symbol": "A", "price": 2.0, "qty": 3}, {"symbol": "B", "price": 4.0, "qty": 1}])
    trades.flush()
    assert trades.tables() == ["trades"]
    assert sorted(r["symbol"] for r in trades.query_stream("agg").to_dicts()) == ["A", "B"]
    assert trades.stats("trades")["row_count"] == 2 and trades.stats("trades")["size_bytes"] > 0
    view = laminardb.mv(trades, "hi_only", "SELECT symbol FROM trades WHERE price > 3")
    assert view.query().to_dicts() == [{"symbol": "B"}]
    assert view.sql == "SELECT symbol FROM trades WHERE price > 3"
    assert view.schema.names == ["symbol"]
    assert laminardb.mv(trades, "hi_only").query("symbol = 'B'").num_rows == 1
    schema = laminardb.Schema(trades.schema("agg"))
    assert schema.names == ["symbol", "n", "q", "hi"]
    assert schema.columns[1] == laminardb.Column("n", "int64", True)
    event = laminardb.ChangeEvent(trades.query("SELECT symbol, n FROM agg ORDER BY symbol"))
    rows = list(event)
    assert len(event) == 2 and rows[0]["symbol"] == "A" and rows[0].op == "Insert"
    assert rows[1].to_dict() == {"symbol": "B", "n": 1}
    assert event.pl(lazy=True).collect().shape == (2, 2)
    m = laminardb.Metrics(trades.metrics())
    assert m.total_events == 2 and m.state == "Running" and m.events_per_second > 0
    assert laminardb.BatchWriter is laminardb.Writer
    with trades.writer("trades") as w:
        assert w.name == "trades" and w.schema.names == ["symbol", "price", "qty"]
        assert w.current_watermark is None
    got = []
    done = threading.Event()
    cb = trades.subscribe_callback("SELECT COUNT(*) AS n FROM trades", lambda r: (got.extend(r.to_dicts()), done.set()))
    assert done.wait(5)
    assert got == [{"n": 2}]
    infos = trades.queries()
    assert [q.sql for q in infos] == ["SELECT COUNT(*) AS n FROM trades"] and infos[0].active
    assert trades.cancel_query(infos[0].id) and not trades.cancel_query(999)
    cb.wait(5)
    assert not trades.queries()[0].active


def test_module_level_default_connection():
    laminardb.execute("CREATE SOURCE IF NOT EXISTS mod_src (a INT)")
    laminardb.execute("INSERT INTO mod_src VALUES (41), (1)")
    assert laminardb.sql("SELECT SUM(a) AS s FROM mod_src").to_dicts() == [{"s": 42}]


def test_catalog_listing_metrics_and_small_types(trades):
    trades.execute("CREATE SINK out AS SELECT symbol, n FROM agg WITH (connector = 'blackhole')")
    trades.insert("trades", {"symbol": "Z", "price": 9.0, "qty": 3})
    trades.flush()
    assert [(s.name, s.sql) for s in trades.streams()] == [
        ("agg", "SELECT symbol, COUNT(*) AS n, SUM(qty) AS q, MAX(price) AS hi FROM trades GROUP BY symbol")]
    sinks = trades.all_sink_metrics()
    assert [m.name for m in sinks] == ["out"]
    m = trades.metrics()
    assert m.uptime_secs > 0
    # Window state held until the watermark closes the window.
    trades.execute("CREATE SOURCE ticks (s VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")
    trades.execute("CREATE STREAM w AS SELECT s, COUNT(*) AS n FROM ticks "
                   "GROUP BY s, TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE")
    trades.insert("ticks", [{"s": "a", "ts": "2024-01-01T00:00:05"}, {"s": "b", "ts": "2024-01-01T00:00:06"}])
    trades.flush()
    assert trades.stream_metrics("w").state_rows >= 2
    assert trades.stream_metrics("agg").state_rows == 0, "a plain aggregate holds no window state"
    row = next(iter(laminardb.ChangeEvent(trades.query("SELECT symbol, n FROM agg"))))
    assert row.keys() == ["symbol", "n"] and row.values() == ["Z", 1]
    config = laminardb.LaminarConfig(checkpoint_interval_ms=250)
    assert config.checkpoint_interval_ms == 250 and laminardb.Config is laminardb.LaminarConfig
    assert laminardb.Watermark(current=1_000, lag_ms=40).lag_ms == 40

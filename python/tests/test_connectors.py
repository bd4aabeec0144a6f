"""Sources and sinks declared in SQL (F-PY-011, F-PY-018) with the built-in connectors that need
no outside service: datagen, file, console, blackhole."""

import json
import pathlib
import subprocess
import sys
import time

import fastavro
import pytest

import laminardb


def wait_for(pred, timeout=30.0):
    t = time.monotonic()
    while not pred():
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.01)


def finished(db, name):
    m = db.source_metrics(name)
    return m is not None and m.connector_state == "finished"


DATAGEN = (
    "CREATE SOURCE sensor_data (device_id VARCHAR, temperature DOUBLE, ts TIMESTAMP, "
    "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'datagen', 'rows_per_second' = '0', "
    "'max_rows' = '5000', 'seed' = '1', 'fields.device_id.values' = 'a,b,c', "
    "'fields.temperature.min' = '50', 'fields.temperature.max' = '150', "
    "'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.step' = '10')"
)


def test_source_framework_catalog_metrics_and_lifecycle():
    with laminardb.open(":memory:") as db:
        r = db.execute(DATAGEN)
        assert r.result_type == "ddl" and r.ddl_type == "CREATE SOURCE"
        (info,) = db.sources()
        assert info.name == "sensor_data"
        assert info.schema.names == ["device_id", "temperature", "ts"]
        assert info.watermark_column == "ts"
        assert "sensor_data" in db.list_tables()
        assert db.source_metrics("nope") is None
        m = db.source_metrics("sensor_data")
        assert m.connector_state == "created" and m.total_events == 0
        db.execute("CREATE STREAM high_temp AS SELECT device_id, temperature, ts FROM sensor_data WHERE temperature > 100.0")
        db.start()
        wait_for(lambda: finished(db, "sensor_data"))
        db.flush()
        (m,) = db.all_source_metrics()
        assert m.total_events == 5000
        assert m.capacity > 0 and 0.0 <= m.utilization <= 1.0
        # 5000 rows 10 ms apart from 2024-01-01: the last event time minus the 1 s delay.
        assert m.watermark == 1704067200000 + 4999 * 10 - 1000
        hot = db.query("SELECT COUNT(*) AS n FROM high_temp").to_arrow().column("n")[0].as_py()
        expected = db.query("SELECT COUNT(*) AS n FROM sensor_data WHERE temperature > 100.0").to_arrow().column("n")[0].as_py()
        assert hot == expected and 0 < hot < 5000
        topo = db.topology()
        assert ("source", "sensor_data") in {(n.node_type, n.name) for n in topo.nodes}
        assert ("sensor_data", "high_temp") in {(e.from_node, e.to_node) for e in topo.edges}
        db.shutdown()


def test_invalid_connectors_and_options_raise_connector_error():
    with laminardb.open(":memory:") as db:
        with pytest.raises(laminardb.ConnectorError, match="unknown source connector 'nope'.*datagen"):
            db.execute("CREATE SOURCE s (a BIGINT) WITH (connector = 'nope')")
        with pytest.raises(laminardb.ConnectorError, match="did you mean 'rows_per_second'"):
            db.execute("CREATE SOURCE s (a BIGINT) WITH (connector = 'datagen', 'rows_per_secnd' = '5')")
        with pytest.raises(laminardb.ConnectorError, match="'max_rows'"):
            db.execute("CREATE SOURCE s (a BIGINT) WITH (connector = 'datagen', 'max_rows' = 'lots')")
        assert db.list_tables() == []
        db.execute("CREATE SOURCE t (a BIGINT)")
        with pytest.raises(laminardb.ConnectorError, match="unknown sink connector 'nope'"):
            db.execute("CREATE SINK k AS SELECT * FROM t WITH (connector = 'nope')")
        with pytest.raises(laminardb.ConnectorError, match="append-only"):
            db.execute("CREATE SINK k AS SELECT a, COUNT(*) AS n FROM t GROUP BY a WITH (connector = 'file', 'path' = '/tmp/x')")
        assert db.list_sinks() == [] and db.sink_count == 0


def test_sink_framework_writes_files_and_counts_emitted_rows(tmp_path: pathlib.Path):
    src_dir = tmp_path / "in"
    out_dir = tmp_path / "out"
    src_dir.mkdir()
    (src_dir / "part-1.jsonl").write_text(
        '{"symbol": "A", "price": 1500.0}\n{"symbol": "B", "price": 10.0}\n{oops\n{"symbol": "C", "price": 2000}\n'
    )
    with laminardb.open(str(tmp_path / "db")) as db:
        db.execute(f"CREATE SOURCE trades (symbol VARCHAR, price DOUBLE) WITH (connector = 'file', 'path' = '{src_dir}')")
        r = db.execute(
            f"CREATE SINK alerts AS SELECT symbol, price FROM trades WHERE price > 1000.0 "
            f"WITH (connector = 'file', 'path' = '{out_dir}', 'format' = 'json')"
        )
        assert r.result_type == "ddl"
        assert [s.name for s in db.sinks()] == ["alerts"]
        assert db.list_sinks() == ["alerts"] and db.sink_count == 1
        assert ("trades", "alerts") in {(e.from_node, e.to_node) for e in db.topology().edges}
        before = db.metrics().total_events_emitted
        db.start()
        wait_for(lambda: finished(db, "trades"))
        db.flush()
        assert db.metrics().total_events_emitted == before + 2
        sm = db.sink_metrics("alerts")
        assert sm.rows_written == 2 and sm.state == "running" and sm.connector == "file"
        errors = db.query("SELECT position, payload FROM trades_errors").to_dicts()
        assert errors == [{"position": "part-1.jsonl:3", "payload": "{oops"}]
        assert db.source_metrics("trades").dead_letters == 1
        db.shutdown()
    rows = [json.loads(line) for f in sorted(out_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert sorted(rows, key=lambda r: r["symbol"]) == [
        {"symbol": "A", "price": 1500.0},
        {"symbol": "C", "price": 2000.0},
    ]
    # Reopening restores the source and sink definitions.
    with laminardb.open(str(tmp_path / "db")) as db:
        assert db.list_tables() == ["trades"] and db.list_sinks() == ["alerts"]


def test_slow_sink_backpressures_the_source():
    with laminardb.open(":memory:", config=laminardb.LaminarConfig(buffer_size=2000)) as db:
        db.execute(
            "CREATE SOURCE g (id BIGINT) WITH (connector = 'datagen', 'rows_per_second' = '0', 'batch_size' = '500', "
            "'retention' = '100 rows')"
        )
        db.execute("CREATE SINK slow AS SELECT * FROM g WITH (connector = 'blackhole', 'delay_ms' = '20')")
        db.start()
        seen = False
        t = time.monotonic()
        while time.monotonic() - t < 2.0 and not seen:
            m = db.source_metrics("g")
            assert m.pending <= m.capacity + 500
            seen = m.is_backpressured
            time.sleep(0.005)
        assert seen
        db.shutdown()


def test_command_line_runs_a_pipeline_file(tmp_path: pathlib.Path):
    sql = tmp_path / "pipeline.sql"
    sql.write_text(
        "CREATE SOURCE g (k VARCHAR, v BIGINT) WITH (connector = 'datagen', 'rows_per_second' = '0', "
        "'max_rows' = '300', 'fields.k.values' = 'p,q,r');\n"
        "CREATE MATERIALIZED VIEW per_k AS SELECT k, COUNT(*) AS n FROM g GROUP BY k;\n"
        "SELECT SUM(n) AS total FROM per_k;\n"
    )
    code = "import sys; from laminardb.cli import main; sys.argv = ['laminardb', 'run', sys.argv[1]]; main()"
    out = subprocess.run([sys.executable, "-c", code, str(sql)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all sources finished" in out.stdout
    assert "| 300   |" in out.stdout
    assert "done: 300 rows in" in out.stdout


def test_avro_container_files_in_and_out_read_by_an_independent_library(tmp_path: pathlib.Path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    schema = {
        "type": "record",
        "name": "Reading",
        "fields": [
            {"name": "sensor", "type": "string"},
            {"name": "id", "type": ["null", "long"]},
            {"name": "celsius", "type": "float"},
            {"name": "unused", "type": "boolean"},
        ],
    }
    records = [
        {"sensor": "a", "id": 1, "celsius": 20.5, "unused": True},
        {"sensor": "b", "id": None, "celsius": 21.0, "unused": False},  # id is NOT NULL in the source
        {"sensor": "c", "id": 3, "celsius": -4.25, "unused": True},
    ]
    with open(src_dir / "readings.avro", "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema), records, codec="deflate")
    with laminardb.open(":memory:") as db:
        db.execute(
            f"CREATE SOURCE r (id BIGINT NOT NULL, sensor VARCHAR, celsius DOUBLE) "
            f"WITH (connector = 'file', 'path' = '{src_dir}', 'format' = 'avro')"
        )
        db.execute(
            f"CREATE SINK warm AS SELECT id, sensor, celsius * 2 AS doubled FROM r "
            f"WITH (connector = 'file', 'path' = '{out_dir}', 'format' = 'avro')"
        )
        db.start()
        wait_for(lambda: finished(db, "r"))
        db.flush()
        assert sorted(db.query("SELECT id, sensor FROM r").to_dicts(), key=lambda r: r["id"]) == [
            {"id": 1, "sensor": "a"},
            {"id": 3, "sensor": "c"},
        ]
        (err,) = db.query("SELECT position, reason, payload FROM r_errors").to_dicts()
        assert err["position"] == "readings.avro#1" and "id" in err["reason"]
        assert json.loads(err["payload"])["sensor"] == "b"
        db.shutdown()
    out = []
    for path in sorted(out_dir.glob("*.avro")):
        with open(path, "rb") as f:
            out.extend(fastavro.reader(f))
    assert sorted(out, key=lambda r: r["id"]) == [
        {"id": 1, "sensor": "a", "doubled": 41.0},
        {"id": 3, "sensor": "c", "doubled": -8.5},
    ]


def test_connection_problems_raise_connector_error_at_start():
    with laminardb.open(":memory:") as db:
        db.execute("CREATE SOURCE s (a BIGINT) WITH (connector = 'file', 'path' = '/no/such/place')")
        with pytest.raises(laminardb.ConnectorError, match="/no/such/place") as e:
            db.start()
        assert e.value.code == laminardb.codes.CONNECTOR_UNAVAILABLE
        assert db.pipeline_state != "Running"


def test_show_create_returns_the_definition(tmp_path: pathlib.Path):
    with laminardb.open(":memory:") as db:
        db.execute(f"CREATE SOURCE s (a BIGINT) WITH (connector = 'file', 'path' = '{tmp_path}', 'watch' = 'true')")
        (row,) = db.execute("SHOW CREATE SOURCE s").to_query_result().to_dicts()
        assert row["name"] == "s" and row["kind"] == "SOURCE"
        assert "'watch' = 'true'" in row["create_statement"]
        with pytest.raises(laminardb.LaminarError, match="not a sink"):
            db.execute("SHOW CREATE SINK s")


def test_interactive_sql_prompt(tmp_path: pathlib.Path):
    script = (
        "CREATE SOURCE t (k VARCHAR, v BIGINT);\n"
        "CREATE MATERIALIZED VIEW s AS\n  SELECT k, SUM(v) AS total FROM t GROUP BY k;\n"
        "START;\n"
        "INSERT INTO t VALUES ('a', 1), ('a', 2), ('b', 5);\n"
        "FLUSH;\n"
        "SELECT * FROM s ORDER BY k;\n"
        "SELECT nope FROM s;\n"
        "\\q\n"
    )
    code = "import sys; from laminardb.cli import main; sys.argv = ['laminardb', 'sql', sys.argv[1]]; main()"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "db")], input=script, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CREATE MATERIALIZED VIEW s" in out.stdout
    lines = [line.replace(" ", "") for line in out.stdout.splitlines()]
    assert "|a|3|" in lines and "|b|5|" in lines, out.stdout
    assert "error:" in out.stdout  # the bad query is reported and the prompt goes on
    # The catalog persisted in the directory.
    with laminardb.open(str(tmp_path / "db")) as db:
        assert db.list_tables() == ["t"] and db.list_streams() == ["s"]


def test_console_script_is_installed_with_the_package():
    exe = pathlib.Path(sys.executable).with_name("laminardb")
    assert exe.exists(), f"{exe} was not installed"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("laminardb "), out.stdout + out.stderr

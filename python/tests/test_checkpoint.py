"""Checkpoints from Python: checkpoint() results, recovery after a crash (a child process that
exits without shutting down), resuming after a graceful close, and typed errors."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

import laminardb

DDL = [
    "CREATE SOURCE trades (sym VARCHAR, px DOUBLE, PRIMARY KEY (sym))",
    "CREATE SOURCE fills (sym VARCHAR, qty BIGINT)",
    "CREATE STREAM volume AS SELECT sym, SUM(qty) AS qty, COUNT(*) AS n FROM fills GROUP BY sym",
    "CREATE STREAM priced AS SELECT f.sym AS sym, f.qty * t.px AS notional FROM fills f JOIN trades t ON f.sym = t.sym",
]


def rows(db, sql):
    return sorted(tuple(r.values()) for r in db.query(sql).to_dicts())


def test_checkpoint_then_crash_resumes_from_the_checkpoint(tmp_path: pathlib.Path):
    child = textwrap.dedent(
        f"""
        import os, laminardb
        db = laminardb.open({str(tmp_path)!r})
        for ddl in {DDL!r}:
            db.execute(ddl)
        db.start()
        db.insert("trades", [{{"sym": "A", "px": 2.0}}, {{"sym": "B", "px": 3.0}}])
        db.insert("fills", [{{"sym": "A", "qty": 10}}, {{"sym": "B", "qty": 1}}, {{"sym": "A", "qty": 5}}])
        db.flush()
        c = db.checkpoint()
        assert c.full and c.checkpoint_id > 0 and c.bytes > 0 and int(c) == c.epoch, c
        # Not covered by any checkpoint: lost in the crash.
        db.insert("fills", [{{"sym": "B", "qty": 100}}])
        db.insert("trades", [{{"sym": "A", "px": 9.0}}])
        db.flush()
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    db = laminardb.open(str(tmp_path))
    # Source contents are back at once; streams after start().
    assert rows(db, "SELECT sym, qty FROM fills") == [("A", 5), ("A", 10), ("B", 1)]
    db.start()
    assert rows(db, "SELECT * FROM volume") == [("A", 15, 2), ("B", 1, 1)]
    assert rows(db, "SELECT * FROM priced") == [("A", 10.0), ("A", 20.0), ("B", 3.0)]
    # The restored join state is live: an update of A's price retracts and re-inserts its rows.
    db.insert("trades", [{"sym": "A", "px": 1.0}])
    db.insert("fills", [{"sym": "B", "qty": 2}])
    db.flush()
    assert rows(db, "SELECT * FROM priced") == [("A", 5.0), ("A", 10.0), ("B", 3.0), ("B", 6.0)]
    assert rows(db, "SELECT * FROM volume") == [("A", 15, 2), ("B", 3, 2)]
    db.close()


def test_graceful_close_checkpoints_when_enabled(tmp_path: pathlib.Path):
    cfg = laminardb.LaminarConfig(checkpoint_interval_ms=60_000)
    with laminardb.open(str(tmp_path), config=cfg) as db:
        assert db.is_checkpoint_enabled
        for ddl in DDL:
            db.execute(ddl)
        db.start()
        db.insert("fills", [{"sym": "C", "qty": 7}])
        db.flush()
    with laminardb.open(str(tmp_path), config=cfg) as db:
        db.start()
        db.insert("fills", [{"sym": "C", "qty": 1}])
        db.flush()
        assert rows(db, "SELECT * FROM volume") == [("C", 8, 2)]


def test_checkpoint_errors(tmp_path: pathlib.Path):
    with laminardb.open(":memory:") as db:
        assert not db.is_checkpoint_enabled
        db.execute("CREATE SOURCE s (x BIGINT)")
        db.start()
        with pytest.raises(laminardb.CheckpointError, match="in-memory"):
            db.checkpoint()
    with laminardb.open(str(tmp_path)) as db:
        with pytest.raises(laminardb.CheckpointError, match="start"):
            db.checkpoint()
        db.execute("CREATE SOURCE s (x BIGINT)")
        with pytest.raises(laminardb.ConnectorError, match="exactly-once"):
            db.execute(
                "CREATE SINK k AS SELECT * FROM s WITH (connector = 'file', 'path' = "
                f"'{tmp_path / 'out'}', 'delivery.guarantee' = 'exactly-once')"
            )
        assert db.list_sinks() == []
    # Storage that cannot be written (a file where the checkpoint directory must go).
    blocker = tmp_path / "blocked"
    blocker.write_text("not a directory")
    cfg = laminardb.LaminarConfig(storage_dir=str(blocker))
    with laminardb.open(str(tmp_path / "db2"), config=cfg) as db:
        db.execute("CREATE SOURCE s (x BIGINT)")
        db.execute("CREATE STREAM c AS SELECT COUNT(*) AS n FROM s")
        db.start()
        db.insert("s", [{"x": 1}])
        with pytest.raises(laminardb.CheckpointError, match="cannot create"):
            db.checkpoint()
        # The pipeline goes on.
        db.insert("s", [{"x": 2}])
        db.flush()
        assert db.query("SELECT n FROM c").to_dicts() == [{"n": 2}]

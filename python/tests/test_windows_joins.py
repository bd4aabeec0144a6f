"""Joins, event-time windows and watermarks through the Python API."""

import datetime as dt

import laminardb


def ms(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


def test_tumbling_window_emits_on_close_and_counts_late_rows():
    db = laminardb.open(":memory:")
    db.execute(
        "CREATE SOURCE trades (symbol VARCHAR, price DOUBLE, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
    )
    db.execute(
        "CREATE STREAM bars AS SELECT symbol, window_start, window_end, COUNT(*) AS n, MAX(price) AS hi "
        "FROM trades GROUP BY symbol, TUMBLE(ts, INTERVAL '1' MINUTE) EMIT ON WINDOW CLOSE"
    )
    db.start()
    db.insert(
        "trades",
        [
            {"symbol": "A", "price": 10.0, "ts": "2024-01-01T00:00:05"},
            {"symbol": "A", "price": 12.0, "ts": "2024-01-01T00:00:50"},
            {"symbol": "B", "price": 7.0, "ts": "2024-01-01T00:00:30"},
        ],
    )
    db.flush()
    assert db.query("SELECT * FROM bars").num_rows == 0, "the window is still open"
    w = db.writer("trades")
    w.watermark(ms("2024-01-01T00:01:00"))
    w.flush()
    db.flush()
    rows = sorted(db.query("SELECT symbol, n, hi FROM bars").to_dicts(), key=lambda r: r["symbol"])
    assert rows == [{"symbol": "A", "n": 2, "hi": 12.0}, {"symbol": "B", "n": 1, "hi": 7.0}]
    # A row for the closed window is late: dropped and counted, the final rows stay as they are.
    db.insert("trades", [{"symbol": "A", "price": 99.0, "ts": "2024-01-01T00:00:59"}])
    db.flush()
    assert db.query("SELECT n FROM bars WHERE symbol = 'A'").to_dicts() == [{"n": 2}]
    assert db.stream_metrics("bars").late_rows == 1
    assert db.pipeline_watermark == ms("2024-01-01T00:01:00")
    db.close()


def test_left_join_of_updating_sources():
    db = laminardb.open(":memory:")
    db.execute("CREATE SOURCE users (id BIGINT, name VARCHAR, PRIMARY KEY (id))")
    db.execute("CREATE SOURCE orders (id BIGINT, user_id BIGINT, amount BIGINT, PRIMARY KEY (id))")
    db.execute(
        "CREATE MATERIALIZED VIEW spend AS SELECT u.name AS name, SUM(o.amount) AS total "
        "FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.name"
    )
    db.start()
    db.insert("users", [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}])
    db.insert("orders", [{"id": 1, "user_id": 1, "amount": 30}, {"id": 2, "user_id": 1, "amount": 5}])
    db.flush()
    got = {r["name"]: r["total"] for r in db.query("SELECT * FROM spend").to_dicts()}
    assert got == {"ann": 35, "bob": None}
    db.insert("orders", [{"id": 2, "user_id": 2, "amount": 5}])  # moves to bob
    db.flush()
    got = {r["name"]: r["total"] for r in db.query("SELECT * FROM spend").to_dicts()}
    assert got == {"ann": 30, "bob": 5}
    db.close()


def test_session_windows_merge_and_close():
    db = laminardb.open(":memory:")
    db.execute(
        "CREATE SOURCE clicks (usr VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)"
    )
    q = "SELECT usr, window_start, window_end, COUNT(*) AS n FROM clicks GROUP BY usr, SESSION(ts, INTERVAL '10' SECOND)"
    db.execute(f"CREATE STREAM visits AS {q}")
    db.execute(f"CREATE STREAM visits_final AS {q} EMIT ON WINDOW CLOSE")
    db.start()
    db.insert(
        "clicks",
        [
            {"usr": "a", "ts": "2024-01-01T00:00:00"},
            {"usr": "a", "ts": "2024-01-01T00:00:30"},
            {"usr": "b", "ts": "2024-01-01T00:00:05"},
        ],
    )
    db.flush()
    assert sorted((r["usr"], r["n"]) for r in db.query("SELECT usr, n FROM visits").to_dicts()) == [
        ("a", 1),
        ("a", 1),
        ("b", 1),
    ]
    # Rows at :08, :16 and :24 bridge a's two sessions into one of five rows.
    db.insert("clicks", [{"usr": "a", "ts": f"2024-01-01T00:00:{s:02}"} for s in (8, 16, 24)])
    db.flush()
    rows = db.query("SELECT usr, window_start, window_end, n FROM visits WHERE usr = 'a'").to_dicts()
    assert [(r["n"], r["window_start"].second, r["window_end"].second) for r in rows] == [(5, 0, 40)]
    assert db.query("SELECT * FROM visits_final").num_rows == 0
    w = db.writer("clicks")
    w.watermark(ms("2024-01-01T00:01:00"))
    w.flush()
    db.flush()
    final = sorted((r["usr"], r["n"]) for r in db.query("SELECT usr, n FROM visits_final").to_dicts())
    assert final == [("a", 5), ("b", 1)]
    db.close()

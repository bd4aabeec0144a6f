"""Quick start: a source, an incremental aggregate, a live subscription and ad-hoc SQL."""

import laminardb

with laminardb.open(":memory:") as db:
    db.execute("CREATE SOURCE trades (symbol VARCHAR, price DOUBLE, qty BIGINT)")
    db.execute("""
        CREATE MATERIALIZED VIEW summary AS
        SELECT symbol, COUNT(*) AS trades, SUM(qty) AS volume, MAX(price) AS high
        FROM trades GROUP BY symbol
    """)
    db.start()
    sub = db.subscribe_stream("summary")

    db.insert("trades", [
        {"symbol": "AAPL", "price": 189.5, "qty": 100},
        {"symbol": "MSFT", "price": 411.0, "qty": 20},
        {"symbol": "AAPL", "price": 190.25, "qty": 50},
    ])
    update = sub.next_timeout(5000)          # the rows of the symbols that changed
    print(update.to_pandas())

    db.insert("trades", {"symbol": "MSFT", "price": 415.0, "qty": 5})
    db.flush()
    print(db.query("SELECT * FROM summary ORDER BY symbol").to_dicts())
    print(db.metrics())

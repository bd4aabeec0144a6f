"""A live-updating HTML table fed by LaminarDB's WebSocket sink.

    python examples/live_dashboard/dashboard.py            # then open http://127.0.0.1:8000/

Trades are inserted into a source, a continuous GROUP BY keeps per-symbol totals, and a WebSocket
sink in server mode sends every change to the connected browsers; `index.html` (a static file)
keeps the table. Options: --http-port, --ws-port, --trades N (how many to insert, default
unbounded), --rate (trades per second), --seconds (stop after this long).
"""

import argparse
import functools
import http.server
import pathlib
import threading
import time

import laminardb

SYMBOLS = ["AAPL", "AMZN", "GOOG", "MSFT"]


def trade(i: int) -> dict:
    """The i-th trade (deterministic, so that the final table is known)."""
    return {"sym": SYMBOLS[i % len(SYMBOLS)], "qty": 1 + (i * 7) % 10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--ws-port", type=int, default=8765)
    ap.add_argument("--trades", type=int, default=0, help="trades to insert (0: until stopped)")
    ap.add_argument("--rate", type=float, default=50.0, help="trades per second")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: run until Ctrl-C)")
    args = ap.parse_args()

    here = pathlib.Path(__file__).resolve().parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(here))
    handler.log_message = lambda *a, **k: None
    web = http.server.ThreadingHTTPServer(("127.0.0.1", args.http_port), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()

    with laminardb.open(":memory:") as db:
        db.execute("CREATE SOURCE trades (sym VARCHAR, qty BIGINT)")
        db.execute("CREATE STREAM volume AS SELECT sym, COUNT(*) AS trades, SUM(qty) AS qty FROM trades GROUP BY sym")
        db.execute(f"""CREATE SINK live AS SELECT * FROM volume WITH (
            connector = 'websocket', 'mode' = 'server', 'bind_address' = '127.0.0.1:{args.ws_port}')""")
        db.start()
        print(f"open http://127.0.0.1:{args.http_port}/?ws=ws://127.0.0.1:{args.ws_port}/", flush=True)
        started, i = time.monotonic(), 0
        try:
            while True:
                if args.seconds and time.monotonic() - started >= args.seconds:
                    break
                if not args.trades or i < args.trades:
                    db.insert("trades", trade(i))
                    i += 1
                    if args.trades and i == args.trades:
                        db.flush()
                        print(f"inserted {i} trades", flush=True)
                time.sleep(1.0 / args.rate)
        except KeyboardInterrupt:
            pass
        print(db.query("SELECT * FROM volume ORDER BY sym").to_pandas().to_string(index=False), flush=True)
        db.shutdown()
    web.shutdown()


if __name__ == "__main__":
    main()

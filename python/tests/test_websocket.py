"""The WebSocket source and sink against peers written with the `websockets` package on
loopback: client mode over wss:// with auth and reconnection, server mode with several senders,
the server-mode sink read by plain clients, the client-mode sink pushing to a server, the spec's
errors, and the live dashboard example rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

import laminardb

websockets = pytest.importorskip("websockets")
from websockets.sync.client import connect as ws_connect  # noqa: E402
from websockets.sync.server import serve as ws_serve  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, f, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not f():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class FeedServer:
    """A WebSocket server that sends `messages` to each client and then keeps the connection
    open until stopped (`hold`) or closes it; it records every connection's Authorization
    header."""

    def __init__(self, port, messages, ssl_context=None, hold=True):
        self.auth = []
        self.messages = messages
        self.done = threading.Event()

        def handler(conn):
            self.auth.append(conn.request.headers.get("Authorization"))
            for m in self.messages:
                conn.send(m)
            self.done.wait(30 if hold else 0.2)

        self.server = ws_serve(handler, "127.0.0.1", port, ssl=ssl_context)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.done.set()
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def tls(tmp_path):
    """A test CA (its certificate is returned, to trust) and an SSL context serving a
    certificate it issued for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem"))
    ext = tmp_path / "leaf.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
        "-subj", "/CN=LaminarDB test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "1", "-extfile", str(ext))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ca, ctx


def test_client_source_over_wss_with_auth(tls):
    cert, ctx = tls
    port = free_port()
    msgs = [json.dumps({"symbol": f"S{i % 5}", "price": float(i), "volume": 1.0, "ts": 1_700_000_000_000 + i})
            for i in range(500)]
    server = FeedServer(port, msgs, ctx)
    try:
        with laminardb.open(":memory:") as db:
            db.execute(f"""CREATE SOURCE crypto_prices (symbol VARCHAR, price DOUBLE, volume DOUBLE, ts TIMESTAMP)
                WITH (connector = 'websocket', 'url' = 'wss://127.0.0.1:{port}/v1/prices', 'format' = 'json',
                      'auth' = 'Bearer my-api-key', 'tls.ca_file' = '{cert}',
                      'reconnect.initial_delay_ms' = '1000', 'reconnect.max_delay_ms' = '30000',
                      'reconnect.max_retries' = '0')""")
            assert "crypto_prices" in [s.name for s in db.sources()]
            assert "crypto_prices" in db.list_tables()
            db.execute("""CREATE STREAM price_avg AS SELECT symbol, AVG(price) AS avg_price, COUNT(*) AS tick_count
                FROM crypto_prices GROUP BY symbol""")
            db.start()
            wait_for("500 ticks", lambda: db.source_metrics("crypto_prices").total_events >= 500)
            db.flush()
            got = {r["symbol"]: (r["tick_count"], r["avg_price"]) for r in db.query("SELECT * FROM price_avg").to_dicts()}
            assert got == {f"S{k}": (100, sum(range(k, 500, 5)) / 100) for k in range(5)}
            m = db.source_metrics("crypto_prices")
            assert m.connector_state == "running" and m.details.get("connected") == 1
            assert server.auth and all(a == "Bearer my-api-key" for a in server.auth)
            db.shutdown()
    finally:
        server.stop()


def test_client_source_reconnects_after_the_server_restarts():
    port = free_port()
    first = FeedServer(port, [json.dumps({"n": i}) for i in range(100)], hold=False)
    with laminardb.open(":memory:") as db:
        db.execute(f"""CREATE SOURCE feed (n BIGINT) WITH (connector = 'websocket', 'url' = 'ws://127.0.0.1:{port}/',
            'reconnect.initial_delay_ms' = '100', 'reconnect.max_delay_ms' = '400')""")
        db.start()
        wait_for("the first 100", lambda: db.source_metrics("feed").total_events >= 100)
        first.stop()
        wait_for("a reconnect attempt", lambda: db.source_metrics("feed").retries >= 1)
        second = FeedServer(port, [json.dumps({"n": i}) for i in range(100, 250)], hold=False)
        try:
            wait_for("all 250 after reconnecting", lambda: db.source_metrics("feed").total_events >= 250)
        finally:
            second.stop()
        db.flush()
        rows = db.query("SELECT COUNT(*) AS c, SUM(n) AS s FROM feed").to_dicts()[0]
        # The first server sends its 100 again to each new connection until it is stopped.
        assert rows["c"] >= 250
        assert db.source_metrics("feed").details.get("reconnects", 0) >= 1
        db.shutdown()


def test_server_source_with_several_devices():
    port = free_port()
    with laminardb.open(":memory:") as db:
        db.execute(f"""CREATE SOURCE telemetry (device_id VARCHAR, temperature DOUBLE, humidity DOUBLE, battery_pct FLOAT)
            WITH (connector = 'websocket', 'mode' = 'server', 'bind_address' = '127.0.0.1:{port}', 'format' = 'json')""")
        db.execute("""CREATE STREAM low_battery_alerts AS SELECT device_id, battery_pct FROM telemetry
            WHERE battery_pct < 20.0""")
        db.start()

        def device(d):
            with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
                for i in range(100):
                    ws.send(json.dumps({"device_id": f"dev{d}", "temperature": 20.0 + i, "humidity": 0.5,
                                        "battery_pct": float(100 - i)}))

        threads = [threading.Thread(target=device, args=(d,)) for d in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        wait_for("500 readings", lambda: db.source_metrics("telemetry").total_events >= 500)
        db.flush()
        alerts = db.query("SELECT device_id, COUNT(*) AS n FROM low_battery_alerts GROUP BY device_id").to_dicts()
        assert sorted((a["device_id"], a["n"]) for a in alerts) == [(f"dev{d}", 19) for d in range(5)]
        m = db.source_metrics("telemetry")
        assert m.details.get("connections") == 5 and m.details.get("port") == port
        db.shutdown()


def test_server_sink_sends_changes_to_clients():
    port = free_port()
    with laminardb.open(":memory:") as db:
        db.execute("CREATE SOURCE market_data (symbol VARCHAR, bid DOUBLE, ask DOUBLE)")
        db.execute("""CREATE STREAM market_summary AS SELECT symbol, AVG(bid) AS avg_bid, AVG(ask) AS avg_ask,
            COUNT(*) AS tick_count FROM market_data GROUP BY symbol""")
        db.execute(f"""CREATE SINK live_dashboard AS SELECT * FROM market_summary WITH (connector = 'websocket',
            'mode' = 'server', 'bind_address' = '127.0.0.1:{port}', 'format' = 'json')""")
        assert "live_dashboard" in db.list_sinks()
        assert "live_dashboard" in [s.name for s in db.sinks()]
        db.start()
        before = db.metrics().total_events_emitted
        table = {}
        with ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            wait_for("the client", lambda: db.sink_metrics("live_dashboard").details.get("clients") == 1)
            for i in range(30):
                db.insert("market_data", {"symbol": ["A", "B", "C"][i % 3], "bid": float(i), "ask": float(i + 1)})
                db.flush()
            expected = {r["symbol"]: r for r in db.query("SELECT * FROM market_summary").to_dicts()}
            deadline = time.monotonic() + 10
            while {k: v["tick_count"] for k, v in table.items()} != {k: 10 for k in "ABC"}:
                assert time.monotonic() < deadline, table
                change = json.loads(ws.recv(timeout=10))
                assert change["op"] in ("insert", "update", "delete")
                assert set(change["key"]) == {"symbol"}
                if change["op"] == "delete":
                    table.pop(change["key"]["symbol"])
                else:
                    table[change["key"]["symbol"]] = change["row"]
        assert table == expected
        assert db.metrics().total_events_emitted > before
        m = db.sink_metrics("live_dashboard")
        assert m.rows_written > 0 and m.details["messages"] >= 30
        db.shutdown()


def test_client_sink_pushes_to_a_server():
    port = free_port()
    received = []

    def handler(conn):
        for m in conn:
            received.append(json.loads(m))

    server = ws_serve(handler, "127.0.0.1", port)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with laminardb.open(":memory:") as db:
            db.execute("CREATE SOURCE alerts (alert_type VARCHAR, message VARCHAR, ts BIGINT)")
            db.execute(f"""CREATE SINK push_notifications AS SELECT alert_type, message, ts FROM alerts WITH (
                connector = 'websocket', 'mode' = 'client', 'url' = 'ws://127.0.0.1:{port}/ingest', 'format' = 'json')""")
            db.start()
            db.insert("alerts", [{"alert_type": "cpu", "message": f"m{i}", "ts": i} for i in range(200)])
            db.flush()
            wait_for("200 pushed messages", lambda: len(received) >= 200, timeout=10)
            assert sorted(r["ts"] for r in received) == list(range(200))
            assert all(r["message"] == f"m{r['ts']}" for r in received)
            db.shutdown()
    finally:
        server.shutdown()


def test_websocket_option_errors():
    with laminardb.open(":memory:") as db:
        with pytest.raises(laminardb.ConnectorError, match="url"):
            db.execute("CREATE SOURCE a (x VARCHAR) WITH (connector = 'websocket')")
        with pytest.raises(laminardb.ConnectorError, match="bind_address"):
            db.execute("CREATE SOURCE a (x VARCHAR) WITH (connector = 'websocket', 'mode' = 'server')")
        db.execute("CREATE SOURCE s (x VARCHAR)")
        with pytest.raises(laminardb.ConnectorError, match="bind_address"):
            db.execute("CREATE SINK k AS SELECT x FROM s WITH (connector = 'websocket', 'mode' = 'server')")
        with pytest.raises(laminardb.ConnectorError, match="url"):
            db.execute("CREATE SINK k AS SELECT x FROM s WITH (connector = 'websocket', 'mode' = 'client')")
        with pytest.raises(laminardb.ConnectorError, match="slow_client_policy"):
            db.execute("""CREATE SINK k AS SELECT x FROM s WITH (connector = 'websocket',
                'bind_address' = '127.0.0.1:0', 'slow_client_policy' = 'wait')""")
        assert [s.name for s in db.sources()] == ["s"] and db.list_sinks() == []


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_live_dashboard_example_in_headless_chromium(tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is needed for the dashboard test (scripts/prereqs.sh installs it)")
        pytest.skip("chromium is not installed")
    http_port, ws_port = free_port(), free_port()
    example = ROOT / "examples" / "live_dashboard" / "dashboard.py"
    proc = subprocess.Popen(
        [sys.executable, str(example), "--http-port", str(http_port), "--ws-port", str(ws_port),
         "--trades", "200", "--rate", "2000", "--seconds", "60"],
        stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any(l.startswith("inserted") for l in lines):
            line = proc.stdout.readline()
            assert line, f"the example ended early: {lines}"
            lines.append(line)
        url = f"http://127.0.0.1:{http_port}/?ws=ws://127.0.0.1:{ws_port}/"
        expected = {}
        for i in range(200):
            sym = ["AAPL", "AMZN", "GOOG", "MSFT"][i % 4]
            n, q = expected.get(sym, (0, 0))
            expected[sym] = (n + 1, q + 1 + (i * 7) % 10)
        import re
        # Headless Chromium's virtual clock can run out before the WebSocket
        # handshake completes on a loaded machine (the page then still says
        # "connecting…"); such a dump is taken again with a longer budget.
        for budget in (5000, 15000, 30000):
            r = subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", f"--virtual-time-budget={budget}",
                 "--dump-dom", url],
                capture_output=True, text=True, timeout=180)
            dom = r.stdout
            assert 'id="live"' in dom, r.stderr[-2000:]
            cells = re.findall(r'<tr data-key="[^"]*"[^>]*>(.*?)</tr>', dom)
            table = {}
            for c in cells:
                vals = re.findall(r"<td>(.*?)</td>", c)
                table[vals[0]] = (int(vals[1]), int(vals[2]))
            if 'id="status">connecting' not in dom:
                break
        assert table == expected, dom[-3000:]
    finally:
        proc.terminate()
        proc.wait(30)

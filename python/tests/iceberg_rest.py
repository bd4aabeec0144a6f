"""A small Iceberg REST catalog server for tests, on loopback, sitting on pyiceberg's SQL
catalog: the REST endpoints the sink uses (config, namespaces, load/create/commit table), with
pyiceberg checking every commit's requirements and applying its updates. Optional bearer-token
and OAuth2 client-credentials checks, and a request log for assertions.

Run alone: `python iceberg_rest.py <dir> [port]` serves the catalog `<dir>/catalog.db` with the
warehouse `<dir>` until killed."""

from __future__ import annotations

import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyiceberg.catalog.rest import CreateTableRequest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (CommitFailedException, NamespaceAlreadyExistsError, NoSuchNamespaceError,
                                  NoSuchTableError, TableAlreadyExistsError)
from pyiceberg.table import CommitTableRequest


class RestCatalogServer:
    """Serves `catalog` over HTTP on 127.0.0.1 under the path prefix `prefix` (as a server's
    config announces it); `token`: the bearer token every call must carry; `client`:
    (client_id, secret) accepted at /v1/oauth/tokens in exchange for `token`."""

    def __init__(self, catalog: SqlCatalog, prefix: str = "", token: str | None = None,
                 client: tuple[str, str] | None = None, port: int = 0):
        self.catalog = catalog
        self.prefix = prefix.strip("/")
        self.token = token
        self.client = client
        self.requests: list[tuple[str, str]] = []
        self.conflicts = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server._handle(self, "GET")

            def do_POST(self):
                server._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RestCatalogServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: object) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, kind: str, message: str) -> None:
        RestCatalogServer._reply(h, status, {"error": {"message": message, "type": kind, "code": status}})

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, url.path))
        if method == "POST" and url.path == "/v1/oauth/tokens":
            form = dict(urllib.parse.parse_qsl(body.decode()))
            if self.client and (form.get("client_id"), form.get("client_secret")) == self.client \
                    and form.get("grant_type") == "client_credentials":
                return self._reply(h, 200, {"access_token": self.token, "token_type": "bearer",
                                            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
            return self._error(h, 401, "NotAuthorizedException", "bad client credentials")
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(h, 401, "NotAuthorizedException", "a valid bearer token is required")
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        if parts[:1] != ["v1"]:
            return self._error(h, 404, "NotFoundException", url.path)
        parts = parts[1:]
        if parts == ["config"]:
            return self._reply(h, 200, {"defaults": {}, "overrides": {"prefix": self.prefix} if self.prefix else {}})
        if self.prefix:
            pre = self.prefix.split("/")
            if parts[:len(pre)] != pre:
                return self._error(h, 404, "NotFoundException", f"no prefix in {url.path}")
            parts = parts[len(pre):]
        try:
            with self.lock:
                self._route(h, method, parts, body)
        except (NoSuchTableError, NoSuchNamespaceError) as e:
            self._error(h, 404, type(e).__name__, str(e))
        except (TableAlreadyExistsError, NamespaceAlreadyExistsError) as e:
            self._error(h, 409, type(e).__name__, str(e))
        except CommitFailedException as e:
            self.conflicts += 1
            self._error(h, 409, "CommitFailedException", str(e))
        except Exception as e:  # noqa: BLE001 - a server answers every error
            self._error(h, 500, type(e).__name__, str(e))

    def _route(self, h: BaseHTTPRequestHandler, method: str, parts: list[str], body: bytes) -> None:
        cat = self.catalog
        if parts == ["namespaces"] and method == "POST":
            req = json.loads(body)
            cat.create_namespace(tuple(req["namespace"]), req.get("properties") or {})
            return self._reply(h, 200, {"namespace": req["namespace"], "properties": req.get("properties") or {}})
        if len(parts) == 2 and parts[0] == "namespaces" and method == "GET":
            ns = tuple(parts[1].split("\x1f"))
            return self._reply(h, 200, {"namespace": list(ns), "properties": cat.load_namespace_properties(ns)})
        if len(parts) == 3 and parts[0] == "namespaces" and parts[2] == "tables" and method == "POST":
            ns = tuple(parts[1].split("\x1f"))
            raw = json.loads(body)
            # An unbound partition spec may leave the field ids out: number them as a server would.
            spec = raw.get("partition-spec")
            if spec:
                for i, f in enumerate(spec.get("fields", [])):
                    f.setdefault("field-id", 1000 + i)
                spec.setdefault("spec-id", 0)
            raw.setdefault("location", None)
            raw.setdefault("write-order", None)
            raw.setdefault("partition-spec", None)
            req = CreateTableRequest.model_validate(raw)
            kwargs = {"location": req.location, "properties": req.properties}
            if req.partition_spec is not None:
                kwargs["partition_spec"] = req.partition_spec
            if req.write_order is not None:
                kwargs["sort_order"] = req.write_order
            t = cat.create_table(ns + (req.name,), schema=req.table_schema, **kwargs)
            return self._load_reply(h, t)
        if len(parts) == 4 and parts[0] == "namespaces" and parts[2] == "tables":
            ident = tuple(parts[1].split("\x1f")) + (parts[3],)
            t = cat.load_table(ident)
            if method == "GET":
                return self._load_reply(h, t)
            req = CommitTableRequest.model_validate_json(body)
            resp = cat.commit_table(t, req.requirements, req.updates)
            return self._reply(h, 200, resp.model_dump_json(by_alias=True, exclude_none=True))
        self._error(h, 404, "NotFoundException", "/".join(parts))

    def _load_reply(self, h: BaseHTTPRequestHandler, t) -> None:
        meta = json.loads(t.metadata.model_dump_json(by_alias=True, exclude_none=True))
        self._reply(h, 200, {"metadata-location": t.metadata_location, "metadata": meta, "config": {}})


if __name__ == "__main__":
    root = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    cat = SqlCatalog("default", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}")
    with RestCatalogServer(cat, port=port) as srv:
        print(srv.uri, flush=True)
        srv.thread.join()

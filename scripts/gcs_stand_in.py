"""Starts gcp-storage-emulator as the tests' Google Cloud Storage stand-in: `python
gcs_stand_in.py <port> <bucket>`, in memory, on 127.0.0.1, with the bucket made.

Parts of GCS's XML API that object_store's client uses and the emulator lacks are added here:
percent-encoded object names in XML API paths (`/bucket/a%2Fb.parquet` is the object
`a/b.parquet`) are decoded before routing, bucket listings (`GET /bucket?list-type=2`, the
S3-compatible `ListBucketResult`) are answered from the emulator's own object list, and
successful answers carry `Last-Modified` and `ETag` headers."""

import hashlib
import sys
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

from gcp_storage_emulator import server

_JSON_API = ("/storage/", "/upload/", "/download/", "/batch", "/_internal")


def _path(self):
    path = self._parsed_url.path
    return path if path.startswith(_JSON_API) else unquote(path)


server.Request.path = property(_path)

_handle = server.Router.handle


def _list_xml(storage, bucket, q):
    one = lambda k: q.get(k, [None])[0]  # noqa: E731
    prefix, delimiter, after = one("prefix") or "", one("delimiter"), one("start-after") or ""
    after = max(after, one("continuation-token") or "")
    files, prefixes = storage.get_file_list(bucket, prefix or None, delimiter)
    keys = [f for f in files if f["name"] > after]
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
           f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
           f"<KeyCount>{len(keys)}</KeyCount><MaxKeys>{max(1000, len(keys))}</MaxKeys><IsTruncated>false</IsTruncated>"]
    for f in keys:
        modified = f.get("updated", "1970-01-01T00:00:00Z")
        out.append(f"<Contents><Key>{escape(f['name'])}</Key><LastModified>{modified}</LastModified>"
                   f"<ETag>\"{escape(f.get('etag', ''))}\"</ETag><Size>{f['size']}</Size></Contents>")
    for p in prefixes:
        out.append(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>")
    out.append("</ListBucketResult>")
    return "".join(out).encode()


def _route(self, method):
    h = self._request_handler
    url = urlparse(h.path)
    q = parse_qs(url.query)
    parts = [p for p in unquote(url.path).split("/") if p]
    if method == "GET" and len(parts) == 1 and "list-type" in q and not url.path.startswith(_JSON_API):
        try:
            body = _list_xml(h.storage, parts[0], q)
        except Exception:  # noqa: BLE001 - a missing bucket
            h.send_response(404)
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        return
    _handle(self, method)


server.Router.handle = _route

_close = server.Response.close


def _close_with_headers(self):
    if 200 <= self.status.value < 300:
        names = {k.lower() for k in self._headers}
        if "last-modified" not in names:
            self["Last-Modified"] = formatdate(usegmt=True)
        if "etag" not in names:
            content = self._content.encode() if isinstance(self._content, str) else self._content
            self["ETag"] = '"{}"'.format(hashlib.md5(content).hexdigest())
    _close(self)


server.Response.close = _close_with_headers

if __name__ == "__main__":
    server.create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]).run()

"""HTTP side of the local endpoint: the guard in front of every request, the REST routes of
ServiceX and the read-only S3 routes of its object store, and the JSON views they answer with."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from utils.delivery.local import guard
from utils.delivery.local.codegen import CODE_GENERATORS
from utils.delivery.local.guard import RefusedError
from utils.delivery.local.store import PENDING, SUCCESS, RequestRecord

log = logging.getLogger(__name__)

APP_VERSION = "agc-local-1"


def status_json(ep: Any, record: RequestRecord) -> dict[str, Any]:
    return {
        "request_id": record.id,
        "did": f"file-list:{record.n_files}",
        "did_id": record.seq,
        "title": record.title,
        "selection": record.selection,
        "tree-name": None,
        "image": CODE_GENERATORS.get(record.codegen, record.codegen),
        "codegen": record.codegen,
        "result-destination": "object-store",
        "result-format": record.result_format,
        "generated-code-cm": f"generated-code-{record.id}",
        "status": record.status,
        "app-version": APP_VERSION,
        "files": record.n_files,
        "files-completed": record.n_completed,
        "files-failed": record.n_failed,
        "files-remaining": record.n_files - record.n_completed - record.n_failed,
        "submit-time": record.submit_time,
        "finish-time": record.finish_time,
        "minio-endpoint": f"{ep.host}:{ep.port}",
        "minio-secured": False,
        "minio-access-key": ep.credentials.s3_access_key,
        "minio-secret-key": ep.credentials.s3_secret_key,
        "log-url": None,
    }


def results_json(ep: Any, request_id: str, later_than: datetime | None) -> dict[str, Any]:
    results = []
    for f in ep.store.files(request_id):
        if f.status == PENDING or f.created_at is None:
            continue
        if later_than is not None and datetime.fromisoformat(f.created_at) <= later_than:
            continue
        results.append(
            {
                "file-path": f.path,
                "s3-object-name": f.object_name,
                "transform_status": f.status,
                "created_at": f.created_at,
                "total-bytes": f.bytes or 0,
                "total-events": f.events or 0,
                "info": f.info,
            }
        )
    return {"results": results}


def dataset_json(ep: Any, record: RequestRecord) -> dict[str, Any]:
    return {
        "id": record.seq,
        "name": f"file list of request {record.id} ({record.title})",
        "did_finder": "user",
        "n_files": record.n_files,
        "size": record.total_bytes,
        "events": record.total_events,
        "last_used": record.finish_time or record.submit_time,
        "last_updated": record.finish_time or record.submit_time,
        "lookup_status": "complete",
        "is_stale": False,
        "files": [
            {
                "id": f.index,
                "adler32": None,
                "file_size": f.bytes or 0,
                "file_events": f.events or 0,
                "paths": f.path,
            }
            for f in ep.store.files(record.id)
        ],
    }


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace(" ", "+"))  # an unencoded '+' arrives as a space
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Handler(BaseHTTPRequestHandler):
    """Requests of one connection; ``endpoint`` is set on a subclass per endpoint."""

    endpoint: Any  # the LocalEndpoint (utils.delivery.local.server) served
    _length = 0
    protocol_version = "HTTP/1.1"
    server_version = "agc-servicex-local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- responses ---------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, data: Any) -> None:
        self._send(code, json.dumps(data).encode(), "application/json")

    def _error(self, code: int, message: str) -> None:
        self._json(code, {"message": message})

    def _s3_error(self, code: int, s3_code: str, message: str) -> None:
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{s3_code}</Code><Message>{escape(message)}</Message></Error>'
        self._send(code, body.encode(), "application/xml")

    def _body(self) -> bytes:
        return self.rfile.read(self._length) if self._length else b""

    def _guard(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        """Raise RefusedError unless the request may be served (before any of its body is read)."""
        ep = self.endpoint
        guard.check_host(self.headers.get("Host"), ep.allowed_hosts)
        guard.check_origin(self.headers.get("Origin"), ep.allowed_hosts)
        self._length = guard.check_body_size(self.headers, ep.max_body_bytes)
        authorization = self.headers.get("Authorization")
        if path == "/servicex" or path.startswith("/servicex/"):
            ep.credentials.check_bearer(authorization)
        elif path == "/token/refresh":
            ep.credentials.check_bearer(authorization, refresh_only=True)
        else:
            ep.credentials.check_s3(authorization, query)
        guard.check_content_type(method, self.headers, self._length)

    # -- routing -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query, keep_blank_values=True)
        self._length = 0
        try:
            self._guard(method, path, query)
            if method == "PUT":
                self._body()
                return self._s3_error(405, "MethodNotAllowed", "the local endpoint is read-only over S3")
            if path == "/token/refresh" and method == "POST":
                self._body()
                return self._json(200, {"access_token": self.endpoint.credentials.access_token()})
            if path == "/servicex" or path.startswith("/servicex/"):
                self._rest(method, path, query)
            else:
                self._s3(method, path, query)
        except RefusedError as refusal:
            log.warning("refused %s %s from %s: %s", method, split.path[:200], self.address_string(), refusal.reason)
            self.close_connection = True  # the body, if any, was not read
            headers = {"WWW-Authenticate": "Bearer"} if refusal.code == 401 else None
            self._send(refusal.code, json.dumps({"message": refusal.reason}).encode(), "application/json", headers)
        except Exception as err:  # never leave a client without an answer
            log.exception("error serving %s %s", method, self.path)
            self._error(500, f"{type(err).__name__}: {err}")

    # -- REST --------------------------------------------------------------------------------
    def _rest(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        ep = self.endpoint
        if method == "POST":
            body = self._body()
        if path == "/servicex" and method in ("GET", "HEAD"):
            return self._json(
                200,
                {
                    "app-version": APP_VERSION,
                    "code-gen-image": dict(CODE_GENERATORS),
                    "capabilities": ["poll_local_transformation_results"],
                },
            )
        if path == "/servicex/transformation":
            if method == "GET":
                return self._json(200, {"requests": [status_json(ep, r) for r in ep.store.all()]})
            if method == "POST":
                try:
                    request_id = ep.submit(json.loads(body or b"{}"))
                except RecursionError:
                    return self._error(400, "request body is nested too deeply")
                except (ValueError, json.JSONDecodeError) as err:
                    return self._error(400, str(err))
                return self._json(200, {"request_id": request_id})
        m = re.fullmatch(r"/servicex/transformation/([^/]+)(/results|/cancel)?", path)
        if m:
            request_id, action = guard.check_request_id(m.group(1)), m.group(2)
            record = ep.store.get(request_id)
            if record is None:
                return self._error(404, f"transformation request {request_id} not found")
            if action is None and method == "GET":
                return self._json(200, status_json(ep, record))
            if action is None and method == "DELETE":
                ep.delete(request_id)
                return self._json(200, {"message": f"transformation request {request_id} deleted"})
            if action == "/results" and method == "GET":
                later = query.get("later_than", [None])[0]
                try:
                    later_than = _parse_time(later) if later else None
                except ValueError:
                    return self._error(400, f"later_than {later!r} is not an ISO time")
                return self._json(200, results_json(ep, request_id, later_than))
            if action == "/cancel" and method == "GET":
                ep.cancel(request_id)
                return self._json(200, {"message": f"transformation request {request_id} canceled"})
        if path == "/servicex/datasets" and method == "GET":
            return self._json(200, {"datasets": [dataset_json(ep, r) for r in ep.store.all()]})
        m = re.fullmatch(r"/servicex/datasets/(\d+)", path)
        if m:
            record = ep.store.get_by_seq(int(m.group(1)))
            if record is None:
                return self._error(404, f"dataset {m.group(1)} not found")
            if method == "GET":
                return self._json(200, dataset_json(ep, record))
            if method == "DELETE":
                ep.delete(record.id)
                return self._json(200, {"dataset-id": record.seq, "stale": True})
        return self._error(404 if method in ("GET", "DELETE", "POST") else 405, f"no route for {method} {path}")

    # -- S3 (path-style, read-only) ----------------------------------------------------------
    def _s3(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        parts = path.lstrip("/").split("/", 1)
        bucket = unquote(parts[0])
        key = guard.check_object_name(unquote(parts[1])) if len(parts) > 1 and parts[1] else ""
        ep = self.endpoint
        record = ep.store.get(guard.check_request_id(bucket)) if bucket else None
        if record is None:
            return self._s3_error(404, "NoSuchBucket", f"bucket {bucket!r} does not exist")
        if not key:
            if method == "HEAD":
                return self._send(200, b"", "application/xml")
            return self._list_objects(record, query)
        found = ep.store.file_by_object(record.id, key)
        disk = ep.output_path(record.id, found.disk_name) if found else None
        if disk is None or not disk.is_file():
            return self._s3_error(404, "NoSuchKey", f"object {key!r} does not exist in {bucket}")
        stat = disk.stat()
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": f'"{stat.st_size:x}-{int(stat.st_mtime_ns):x}"',
            "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
        }
        start, end, code = 0, stat.st_size - 1, 200
        rng = self.headers.get("Range")
        if rng and method == "GET":
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._s3_error(416, "InvalidRange", f"cannot serve range {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), stat.st_size - 1) if m.group(2) else stat.st_size - 1
            else:
                start = max(0, stat.st_size - int(m.group(2)))
            if start > end and stat.st_size:
                return self._s3_error(416, "InvalidRange", f"range {rng!r} outside 0-{stat.st_size - 1}")
            code = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{stat.st_size}"
        length = max(0, end - start + 1)
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            return None
        with open(disk, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
        return None

    def _list_objects(self, record: RequestRecord, query: dict[str, list[str]]) -> None:
        encode = query.get("encoding-type", [""])[0] == "url"
        entries = []
        for f in self.endpoint.store.files(record.id, SUCCESS):
            disk = self.endpoint.output_path(record.id, f.disk_name)
            if not disk.is_file():
                continue
            stat = disk.stat()
            key = quote(f.object_name, safe="") if encode else escape(f.object_name)
            modified = datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            entries.append(
                f"<Contents><Key>{key}</Key><LastModified>{modified}</LastModified>"
                f'<ETag>"{stat.st_size:x}-{int(stat.st_mtime_ns):x}"</ETag><Size>{stat.st_size}</Size>'
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(record.id)}</Name><Prefix></Prefix><KeyCount>{len(entries)}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys>{'<EncodingType>url</EncodingType>' if encode else ''}"
            f"<IsTruncated>false</IsTruncated>{''.join(entries)}</ListBucketResult>"
        )
        self._send(200, body.encode(), "application/xml")

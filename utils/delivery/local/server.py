"""A ServiceX-compatible endpoint on 127.0.0.1: the REST and S3 subset the ``servicex`` client uses.

Transforms run one input file per task in a pool of worker processes; requests and file states
live in ``<state_dir>/requests.sqlite`` and outputs in ``<state_dir>/requests/<id>/``, so a
restarted endpoint resumes what a killed one left unfinished. One endpoint owns a state directory
at a time (an exclusive lock), and ``<state_dir>/endpoint.json`` names the URL of the owner.
It listens on the loopback interface only and has no authentication.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import re
import shutil
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

from utils.delivery.local.codegen import CODE_GENERATORS, CodegenError, generate_source
from utils.delivery.local.store import DONE, PENDING, RUNNING, SUBMITTED, SUCCESS, RequestRecord, RequestStore
from utils.delivery.local.worker import FileOutcome, FileTask, init_worker, run_file, warm_up
from utils.errors import DeliveryError
from utils.io import write_json_atomic

log = logging.getLogger(__name__)

APP_VERSION = "agc-local-1"
LOOPBACK = "127.0.0.1"
RESULT_FORMATS = ("root-file", "parquet")
MAX_ATTEMPTS = 2  # a file whose worker process died is retried once on a fresh pool
_ACCESS_KEY = _SECRET_KEY = "agc-local"


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class LocalEndpoint:
    """The endpoint: ``start()`` serves in a background thread, ``serve_forever()`` blocks.

    ``dispatch=False`` accepts and persists requests without running them (drain mode: a later
    endpoint on the same state directory runs them).
    """

    def __init__(self, state_dir: str | Path, port: int = 0, workers: int | None = None, dispatch: bool = True):
        self.state_dir = Path(state_dir).resolve()
        self.requested_port = int(port)
        self.workers = workers or default_workers()
        self.dispatch = dispatch
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._store: RequestStore | None = None
        self._lock_file = None
        self._executor: ProcessPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._futures: dict[tuple[str, int], Future] = {}
        self._stopping = False
        self._stopped = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("endpoint not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def store(self) -> RequestStore:
        if self._store is None:
            raise RuntimeError("endpoint not started")
        return self._store

    def _acquire_state_dir(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.state_dir / "endpoint.lock", "a+")  # noqa: SIM115 (held for the endpoint's life)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            owner = read_endpoint_info(self.state_dir)
            where = f" by the endpoint at {owner['url']} (pid {owner['pid']})" if owner else ""
            raise DeliveryError(
                f"{self.state_dir}: ServiceX endpoint state directory is in use{where}; "
                "use that endpoint or give this one another --state-dir"
            ) from None
        self._lock_file = lock

    def start(self) -> LocalEndpoint:
        """Bind, resume unfinished requests and serve in a daemon thread; return self."""
        self._acquire_state_dir()
        try:
            self._store = RequestStore(self.state_dir)
            handler = type("Handler", (_Handler,), {"endpoint": self})
            try:
                self._httpd = ThreadingHTTPServer((LOOPBACK, self.requested_port), handler)
            except OSError as err:
                raise DeliveryError(
                    f"cannot listen on {LOOPBACK}:{self.requested_port} for the local ServiceX endpoint: {err}; "
                    "choose another port"
                ) from None
            self._httpd.daemon_threads = True
            write_json_atomic(
                self.state_dir / "endpoint.json",
                {"url": self.url, "port": self.port, "pid": os.getpid(), "started": datetime.now(UTC).isoformat()},
            )
            self._resume()
            if self.dispatch:  # start the workers now: the first request should not wait for imports
                with self._executor_lock:
                    pool = self._pool()
                    for _ in range(self.workers):
                        pool.submit(warm_up)
        except BaseException:
            if self._httpd is not None:
                self._httpd.server_close()
            self._release()
            raise
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"servicex-endpoint-{self.port}", daemon=True
        )
        self._thread.start()
        log.info("local ServiceX endpoint at %s (state in %s, %d workers)", self.url, self.state_dir, self.workers)
        return self

    def serve_forever(self) -> None:
        """Start (unless started) and block until :meth:`stop` is called from another thread."""
        if self._httpd is None:
            self.start()
        self._stopped.wait()

    def stop(self) -> None:
        """Stop serving; running files finish, queued ones stay pending for the next endpoint."""
        if self._stopping:
            return
        self._stopping = True
        if self._httpd is not None:
            if self._thread is not None and self._thread.is_alive():
                self._httpd.shutdown()
            self._httpd.server_close()
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        self._release()
        self._stopped.set()
        log.info("local ServiceX endpoint on %s stopped", self.state_dir)

    def _release(self) -> None:
        if self._store is not None:
            self._store.close()
        info = read_endpoint_info(self.state_dir)
        if info and info.get("pid") == os.getpid() and self._httpd is not None and info.get("port") == self.port:
            (self.state_dir / "endpoint.json").unlink(missing_ok=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- transforms --------------------------------------------------------------------------
    def output_path(self, request_id: str, disk_name: str) -> Path:
        return self.state_dir / "requests" / request_id / disk_name

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(os.getpid(),),
            )
        return self._executor

    def _resume(self) -> None:
        for record in self.store.unfinished():
            if self.dispatch:
                log.info("resuming request %s (%s)", record.id, record.title)
                self._dispatch(record)

    def submit(self, body: dict[str, Any]) -> str:
        """Validate and persist a TransformRequest (JSON with ServiceX's aliases); return its id.

        Raises ValueError with a message for HTTP 400.
        """
        codegen = body.get("codegen")
        if codegen not in CODE_GENERATORS:
            raise ValueError(f"code generator {codegen!r} is not served here; available: {sorted(CODE_GENERATORS)}")
        result_format = body.get("result-format", "root-file")
        if result_format not in RESULT_FORMATS:
            raise ValueError(f"result-format {result_format!r} is not served here; use one of {list(RESULT_FORMATS)}")
        files = body.get("file-list")
        if not files:
            did = body.get("did")
            raise ValueError(
                f"dataset identifier {did!r} cannot be resolved by the local endpoint (it has no DID finders and "
                "no network): pass the input files as a FileList of local paths"
            )
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            raise ValueError("file-list must be a list of non-empty strings")
        selection = body.get("selection")
        if not isinstance(selection, str) or not selection:
            raise ValueError("selection is missing")
        try:
            source = generate_source(codegen, selection)
        except CodegenError as err:
            raise ValueError(str(err)) from None
        request_id = self.store.create(
            title=body.get("title"),
            codegen=codegen,
            selection=selection,
            result_format=result_format,
            generated_code=source,
            files=files,
            status=SUBMITTED,
        )
        log.info(
            "request %s (%s): %d files, %s -> %s", request_id, body.get("title"), len(files), codegen, result_format
        )
        if self.dispatch:
            self._dispatch(self.store.get(request_id))
        return request_id

    def _dispatch(self, record: RequestRecord | None) -> None:
        if record is None or self._stopping:
            return
        if record.status == SUBMITTED:
            self.store.set_status(record.id, RUNNING)
        for f in self.store.files(record.id, PENDING):
            self._submit_file(record, f.index, f.path, f.disk_name)

    def _submit_file(self, record: RequestRecord, index: int, path: str, disk_name: str) -> None:
        attempts = self.store.mark_attempt(record.id, index)
        task = FileTask(
            record.id,
            index,
            path,
            record.generated_code,
            record.result_format,
            str(self.output_path(record.id, disk_name)),
        )
        with self._executor_lock:
            if self._stopping:
                return
            pool = self._pool()
            future = pool.submit(run_file, task)
        self._futures[(record.id, index)] = future
        future.add_done_callback(lambda fut: self._file_done(fut, pool, record, index, path, disk_name, attempts))

    def _file_done(self, future: Future, pool, record, index: int, path: str, disk_name: str, attempts: int) -> None:
        self._futures.pop((record.id, index), None)
        if future.cancelled() or self._stopping:
            return  # stays pending: resumed by the next endpoint on this state directory
        error = future.exception()
        if isinstance(error, BrokenProcessPool):
            with self._executor_lock:
                if self._executor is pool:
                    self._executor = None
                    pool.shutdown(wait=False, cancel_futures=True)
            if attempts < MAX_ATTEMPTS:
                log.warning("worker process died on %s; retrying", path)
                self._submit_file(record, index, path, disk_name)
                return
        try:
            if error is None:
                outcome: FileOutcome = future.result()
                finished = self.store.finish_file(
                    record.id, index, ok=True, nbytes=outcome.bytes, events=outcome.events
                )
            else:
                log.error("request %s: %s failed: %s: %s", record.id, path, type(error).__name__, error)
                finished = self.store.finish_file(record.id, index, ok=False, info=f"{type(error).__name__}: {error}")
        except Exception:  # the store may be closing while the endpoint stops
            if not self._stopping:
                log.exception("request %s: cannot record the outcome of %s", record.id, path)
            return
        if finished:
            done = self.store.get(record.id)
            log.info(
                "request %s (%s) %s: %d/%d files, %d failed",
                record.id,
                record.title,
                finished,
                done.n_completed,
                done.n_files,
                done.n_failed,
            )

    def cancel(self, request_id: str) -> bool:
        record = self.store.get(request_id)
        if record is None:
            return False
        if record.status not in DONE:
            self.store.set_status(request_id, "Canceled")
            for (rid, _), future in list(self._futures.items()):
                if rid == request_id:
                    future.cancel()
        return True

    def delete(self, request_id: str) -> bool:
        self.cancel(request_id)
        shutil.rmtree(self.state_dir / "requests" / request_id, ignore_errors=True)
        return self.store.delete(request_id)

    # -- JSON views --------------------------------------------------------------------------
    def status_json(self, record: RequestRecord) -> dict[str, Any]:
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
            "minio-endpoint": f"{LOOPBACK}:{self.port}",
            "minio-secured": False,
            "minio-access-key": _ACCESS_KEY,
            "minio-secret-key": _SECRET_KEY,
            "log-url": None,
        }

    def results_json(self, request_id: str, later_than: datetime | None) -> dict[str, Any]:
        results = []
        for f in self.store.files(request_id):
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

    def dataset_json(self, record: RequestRecord) -> dict[str, Any]:
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
                for f in self.store.files(record.id)
            ],
        }


def read_endpoint_info(state_dir: str | Path) -> dict[str, Any] | None:
    """The ``endpoint.json`` of the endpoint that owns ``state_dir`` (None when absent)."""
    try:
        with open(Path(state_dir) / "endpoint.json") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace(" ", "+"))  # an unencoded '+' arrives as a space
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Handler(BaseHTTPRequestHandler):
    endpoint: LocalEndpoint
    protocol_version = "HTTP/1.1"
    server_version = "agc-servicex-local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- responses ---------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
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
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

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
        self._body()
        self._s3_error(405, "MethodNotAllowed", "the local endpoint is read-only over S3")

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = parse_qs(split.query, keep_blank_values=True)
        try:
            if path == "/servicex" or path.startswith("/servicex/"):
                self._rest(method, path, query)
            else:
                self._s3(method, path, query)
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
                return self._json(200, {"requests": [ep.status_json(r) for r in ep.store.all()]})
            if method == "POST":
                try:
                    request_id = ep.submit(json.loads(body or b"{}"))
                except (ValueError, json.JSONDecodeError) as err:
                    return self._error(400, str(err))
                return self._json(200, {"request_id": request_id})
        m = re.fullmatch(r"/servicex/transformation/([^/]+)(/results|/cancel)?", path)
        if m:
            request_id, action = m.group(1), m.group(2)
            record = ep.store.get(request_id)
            if record is None:
                return self._error(404, f"transformation request {request_id} not found")
            if action is None and method == "GET":
                return self._json(200, ep.status_json(record))
            if action is None and method == "DELETE":
                ep.delete(request_id)
                return self._json(200, {"message": f"transformation request {request_id} deleted"})
            if action == "/results" and method == "GET":
                later = query.get("later_than", [None])[0]
                try:
                    later_than = _parse_time(later) if later else None
                except ValueError:
                    return self._error(400, f"later_than {later!r} is not an ISO time")
                return self._json(200, ep.results_json(request_id, later_than))
            if action == "/cancel" and method == "GET":
                ep.cancel(request_id)
                return self._json(200, {"message": f"transformation request {request_id} canceled"})
        if path == "/servicex/datasets" and method == "GET":
            return self._json(200, {"datasets": [ep.dataset_json(r) for r in ep.store.all()]})
        m = re.fullmatch(r"/servicex/datasets/(\d+)", path)
        if m:
            record = ep.store.get_by_seq(int(m.group(1)))
            if record is None:
                return self._error(404, f"dataset {m.group(1)} not found")
            if method == "GET":
                return self._json(200, ep.dataset_json(record))
            if method == "DELETE":
                ep.delete(record.id)
                return self._json(200, {"dataset-id": record.seq, "stale": True})
        return self._error(404 if method in ("GET", "DELETE", "POST") else 405, f"no route for {method} {path}")

    # -- S3 (path-style, read-only) ----------------------------------------------------------
    def _s3(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        parts = path.lstrip("/").split("/", 1)
        bucket = unquote(parts[0])
        key = unquote(parts[1]) if len(parts) > 1 else ""
        ep = self.endpoint
        record = ep.store.get(bucket) if bucket else None
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

"""A ServiceX-compatible endpoint on 127.0.0.1: the REST and S3 subset the ``servicex`` client uses.

Transforms run one input file per task in a pool of worker processes; requests and file states
live in ``<state_dir>/requests.sqlite`` and outputs in ``<state_dir>/requests/<id>/``, so a
restarted endpoint resumes what a killed one left unfinished. One endpoint owns a state directory
at a time (an exclusive lock), and ``<state_dir>/endpoint.json`` names the URL of the owner.
It listens on the loopback interface only (another address only when forced) and serves only
clients that hold its token (:mod:`utils.delivery.local.guard`); HTTP handling is in
:mod:`utils.delivery.local.routes`. Queries are checked and interpreted, never executed as code.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import multiprocessing
import os
import shutil
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from utils.delivery.local import guard
from utils.delivery.local.codegen import CODE_GENERATORS, CodegenError, generate_source
from utils.delivery.local.routes import Handler
from utils.delivery.local.store import DONE, PENDING, RUNNING, SUBMITTED, RequestRecord, RequestStore
from utils.delivery.local.worker import FileOutcome, FileTask, init_worker, run_file, warm_up
from utils.errors import DeliveryError
from utils.io import write_json_atomic

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
RESULT_FORMATS = ("root-file", "parquet")
MAX_ATTEMPTS = 2  # a file whose worker process died is retried once on a fresh pool


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class LocalEndpoint:
    """The endpoint: ``start()`` serves in a background thread, ``serve_forever()`` blocks.

    ``dispatch=False`` accepts and persists requests without running them (drain mode: a later
    endpoint on the same state directory runs them). ``host`` other than loopback is refused
    unless ``force_host``. ``credentials`` holds this run's token (random unless given).
    """

    def __init__(
        self,
        state_dir: str | Path,
        port: int = 0,
        workers: int | None = None,
        dispatch: bool = True,
        host: str = LOOPBACK,
        force_host: bool = False,
        max_body_bytes: int = guard.DEFAULT_MAX_BODY_BYTES,
        credentials: guard.Credentials | None = None,
    ):
        if not _is_loopback_address(host) and not force_host:
            raise DeliveryError(
                f"refusing to listen on {host}: the local ServiceX endpoint binds loopback only "
                "(force another address explicitly, knowing that anyone who can reach it may try its token)"
            )
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self.max_body_bytes = int(max_body_bytes)
        self.credentials = credentials or guard.Credentials()
        self.requested_port = int(port)
        self.workers = workers or default_workers()
        self.dispatch = dispatch
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._store: RequestStore | None = None
        self._lock_file: IO[str] | None = None
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
        return f"http://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        """The refresh token clients put in their servicex.yaml."""
        return self.credentials.token

    @property
    def allowed_hosts(self) -> frozenset[str]:
        return guard.allowed_hosts(self.port, () if self.host == LOOPBACK else (self.host,))

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
            handler = type("EndpointHandler", (Handler,), {"endpoint": self})
            try:
                self._httpd = ThreadingHTTPServer((self.host, self.requested_port), handler)
            except OSError as err:
                raise DeliveryError(
                    f"cannot listen on {self.host}:{self.requested_port} for the local ServiceX endpoint: {err}; "
                    "choose another port"
                ) from None
            self._httpd.daemon_threads = True
            info = {"url": self.url, "port": self.port, "pid": os.getpid(), "started": datetime.now(UTC).isoformat()}
            write_json_atomic(self.state_dir / "endpoint.json", {**info, "token": self.token}, mode=0o600)
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
        where = "loopback only" if _is_loopback_address(self.host) else f"{self.host} (FORCED, not loopback)"
        if not _is_loopback_address(self.host):
            log.warning("the local ServiceX endpoint listens on %s, beyond loopback (forced)", self.host)
        log.info(
            "local ServiceX endpoint at %s, bound to %s; every request needs its bearer token (in %s and the "
            "servicex.yaml written for it); state in %s, %d workers",
            self.url,
            where,
            self.state_dir / "endpoint.json",
            self.state_dir,
            self.workers,
        )
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
        for f in files:
            guard.check_input_path(f)
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
            record.codegen,
            record.selection,
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
                if pool is not None and self._executor is pool:
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
            done = self.store.get(record.id) or record
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


def read_endpoint_info(state_dir: str | Path) -> dict[str, Any] | None:
    """The ``endpoint.json`` of the endpoint that owns ``state_dir`` (None when absent)."""
    try:
        with open(Path(state_dir) / "endpoint.json") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _is_loopback_address(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

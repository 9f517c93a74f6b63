"""Persistent request state of the local endpoint (sqlite in its state directory).

Every accepted request and the state of each of its files are written before anything runs, so an
endpoint that is killed and restarted on the same state directory resumes unfinished files and a
client that re-attaches to the request id (the servicex cache does) sees it complete.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# ServiceX status strings (servicex.models.Status)
SUBMITTED, RUNNING, COMPLETE, CANCELED, FATAL = "Submitted", "Running", "Complete", "Canceled", "Fatal"
DONE = (COMPLETE, CANCELED, FATAL)
# per-file states
PENDING, SUCCESS, FAILURE = "pending", "success", "failure"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, title TEXT, codegen TEXT NOT NULL,
    selection TEXT NOT NULL, result_format TEXT NOT NULL, generated_code TEXT NOT NULL,
    status TEXT NOT NULL, submit_time TEXT NOT NULL, finish_time TEXT
);
CREATE TABLE IF NOT EXISTS files (
    request_id TEXT NOT NULL, idx INTEGER NOT NULL, path TEXT NOT NULL, status TEXT NOT NULL,
    object_name TEXT NOT NULL, disk_name TEXT NOT NULL, bytes INTEGER, events INTEGER,
    created_at TEXT, info TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, idx)
);
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """One fixed ISO format (microseconds, UTC offset), so stored times also sort as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class FileRecord:
    request_id: str
    index: int
    path: str
    status: str
    object_name: str
    disk_name: str
    bytes: int | None
    events: int | None
    created_at: str | None
    info: str | None
    attempts: int


@dataclass(frozen=True)
class RequestRecord:
    id: str
    seq: int
    title: str | None
    codegen: str
    selection: str
    result_format: str
    generated_code: str
    status: str
    submit_time: str
    finish_time: str | None
    n_files: int
    n_completed: int
    n_failed: int
    total_bytes: int
    total_events: int


def _file_record(row: sqlite3.Row) -> FileRecord:
    data = dict(row)
    data["index"] = data.pop("idx")
    return FileRecord(**data)


def object_name_for(path: str, result_format: str) -> str:
    """ServiceX's output object name: the input path with ``/`` replaced by ``:``, plus
    ``.parquet`` for parquet output (the client turns ``:`` into ``_`` on download)."""
    name = path.replace("/", ":")
    return name + ".parquet" if result_format == "parquet" else name


class RequestStore:
    """Thread-safe access to ``<state_dir>/requests.sqlite``."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / "requests.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT MAX(created_at) FROM files").fetchone()
        self._last_created = datetime.fromisoformat(row[0]) if row[0] else datetime.min.replace(tzinfo=UTC)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ----------------------------------------------------------------------------
    def create(
        self,
        *,
        title: str | None,
        codegen: str,
        selection: str,
        result_format: str,
        generated_code: str,
        files: list[str],
        status: str,
    ) -> str:
        request_id = str(uuid.uuid4())
        suffix = ".parquet" if result_format == "parquet" else ".root"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()[0]
                self._db.execute(
                    "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (request_id, seq, title, codegen, selection, result_format, generated_code, status, iso(utc_now())),
                )
                self._db.executemany(
                    "INSERT INTO files (request_id, idx, path, status, object_name, disk_name) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (request_id, i, p, PENDING, object_name_for(p, result_format), f"{i:06d}{suffix}")
                        for i, p in enumerate(files)
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return request_id

    def set_status(self, request_id: str, status: str) -> None:
        finish = iso(utc_now()) if status in DONE else None
        with self._lock:
            self._db.execute(
                "UPDATE requests SET status = ?, finish_time = ? WHERE id = ?", (status, finish, request_id)
            )

    def mark_attempt(self, request_id: str, index: int) -> int:
        with self._lock:
            self._db.execute(
                "UPDATE files SET attempts = attempts + 1 WHERE request_id = ? AND idx = ?", (request_id, index)
            )
            return self._db.execute(
                "SELECT attempts FROM files WHERE request_id = ? AND idx = ?", (request_id, index)
            ).fetchone()[0]

    def finish_file(
        self, request_id: str, index: int, *, ok: bool, nbytes: int = 0, events: int = 0, info: str | None = None
    ) -> str | None:
        """Record a file's outcome; return the request's new status when it just finished."""
        with self._lock:
            # strictly increasing creation times: clients poll results "later than" the last seen
            created = max(utc_now(), self._last_created + timedelta(microseconds=1))
            self._last_created = created
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE files SET status = ?, bytes = ?, events = ?, created_at = ?, info = ? "
                    "WHERE request_id = ? AND idx = ? AND status = ?",
                    (
                        SUCCESS if ok else FAILURE,
                        nbytes if ok else None,
                        events if ok else None,
                        iso(created),
                        info,
                        request_id,
                        index,
                        PENDING,
                    ),
                )
                status = self._db.execute("SELECT status FROM requests WHERE id = ?", (request_id,)).fetchone()
                pending = self._db.execute(
                    "SELECT COUNT(*) FROM files WHERE request_id = ? AND status = ?", (request_id, PENDING)
                ).fetchone()[0]
                finished = None
                if status is not None and status[0] not in DONE and pending == 0:
                    finished = COMPLETE
                    self._db.execute(
                        "UPDATE requests SET status = ?, finish_time = ? WHERE id = ?",
                        (COMPLETE, iso(utc_now()), request_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return finished

    def delete(self, request_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM requests WHERE id = ?", (request_id,))
            self._db.execute("DELETE FROM files WHERE request_id = ?", (request_id,))
            return cur.rowcount > 0

    # -- reads -----------------------------------------------------------------------------
    _REQUEST_QUERY = """
        SELECT r.*, COUNT(f.idx) AS n_files,
               SUM(f.status = 'success') AS n_completed, SUM(f.status = 'failure') AS n_failed,
               COALESCE(SUM(f.bytes), 0) AS total_bytes, COALESCE(SUM(f.events), 0) AS total_events
        FROM requests r LEFT JOIN files f ON f.request_id = r.id
    """

    @staticmethod
    def _request(row: sqlite3.Row) -> RequestRecord:
        d = dict(row)
        return RequestRecord(
            **{
                k: d[k]
                for k in (
                    "id",
                    "seq",
                    "title",
                    "codegen",
                    "selection",
                    "result_format",
                    "generated_code",
                    "status",
                    "submit_time",
                    "finish_time",
                )
            },
            n_files=d["n_files"] or 0,
            n_completed=d["n_completed"] or 0,
            n_failed=d["n_failed"] or 0,
            total_bytes=d["total_bytes"],
            total_events=d["total_events"],
        )

    def get(self, request_id: str) -> RequestRecord | None:
        with self._lock:
            row = self._db.execute(self._REQUEST_QUERY + " WHERE r.id = ? GROUP BY r.id", (request_id,)).fetchone()
        return self._request(row) if row is not None and row["id"] is not None else None

    def get_by_seq(self, seq: int) -> RequestRecord | None:
        with self._lock:
            row = self._db.execute(self._REQUEST_QUERY + " WHERE r.seq = ? GROUP BY r.id", (seq,)).fetchone()
        return self._request(row) if row is not None and row["id"] is not None else None

    def all(self) -> list[RequestRecord]:
        with self._lock:
            rows = self._db.execute(self._REQUEST_QUERY + " GROUP BY r.id ORDER BY r.seq").fetchall()
        return [self._request(r) for r in rows]

    def files(self, request_id: str, status: str | None = None) -> list[FileRecord]:
        sql = "SELECT * FROM files WHERE request_id = ?"
        args: tuple = (request_id,)
        if status is not None:
            sql += " AND status = ?"
            args += (status,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY idx", args).fetchall()
        return [_file_record(row) for row in rows]

    def file_by_object(self, request_id: str, object_name: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM files WHERE request_id = ? AND object_name = ? AND status = ?",
                (request_id, object_name, SUCCESS),
            ).fetchone()
        return _file_record(row) if row else None

    def unfinished(self) -> list[RequestRecord]:
        return [r for r in self.all() if r.status not in DONE]

"""The job history in SQLite (``OUTPUTS/jobs.sqlite3``): a restart loses no finished result.

Every state change is committed before it is reported, so what ``GET /api/v1/jobs/{id}`` says
survives a crash. At start-up, jobs the previous server left queued or running are marked failed
("interrupted"), never silently lost. The PNGs themselves live in ``OUTPUTS/images`` (written
atomically, with their recipes); the database lists them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
INTERRUPTED = "interrupted: the server stopped before this job finished; submit it again"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL,
    images TEXT NOT NULL DEFAULT '[]'
)"""
_COLUMNS = ("id", "state", "error", "created", "started", "finished", "step", "total", "request", "images")


class JobStore:
    """Jobs as rows; thread-safe (one connection behind a lock, used by the API and the worker)."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._db.execute("UPDATE jobs SET state='failed', error=?, finished=? WHERE state IN ('queued', 'running')",
                             (INTERRUPTED, time.time()))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job_id: str, request: dict) -> None:
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute("INSERT INTO jobs (id, seq, state, created, request) VALUES (?, ?, 'queued', ?, ?)",
                             (job_id, seq, time.time(), json.dumps(request)))

    def update(self, job_id: str, **values) -> None:
        """Set columns of one job (``images`` as a list); ``state`` also stamps started/finished."""
        if values.get("state") == "running":
            values.setdefault("started", time.time())
        if values.get("state") in FINISHED:
            values.setdefault("finished", time.time())
        if "images" in values:
            values["images"] = json.dumps(values["images"])
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise KeyError(f"no job column {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def recent(self, limit: int) -> list[dict]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY seq DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [_job(row) for row in rows]

    def has_image(self, name: str) -> bool:
        """Whether ``name`` is a file of a job (``ID-INDEX.png``, ...) that this store lists."""
        job = self.get(name.split("-", 1)[0])
        return job is not None and any(name in (image["name"], image.get("file")) for image in job["images"])


def _job(row) -> dict:
    job = dict(zip(_COLUMNS, row))
    job["request"] = json.loads(job["request"])
    job["warnings"] = job["request"].pop("warnings", [])  # recorded with the request, shown beside it
    job["images"] = json.loads(job["images"])
    job["progress"] = {"step": job.pop("step"), "total": job.pop("total")}
    return job

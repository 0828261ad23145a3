#!/usr/bin/env python3
"""The baseline for benches/engine.rs: the SQLite work of a transition, done by
a plain Python loop.

Each transaction inserts a request row, a Logbook event chained to the one
before it with SHA-256 (the format of src/domain/logbook.rs) and an outbox
row, on Passport's own schema (migrations/), in WAL mode with
synchronous=NORMAL like Passport's default durability, and commits.

Prints the number of transactions committed per second. Run it as
`python3 benches/baseline.py`; PASSPORT_BENCH_BASELINE_TX sets how many.
"""

import hashlib
import json
import os
import pathlib
import sqlite3
import struct
import tempfile
import time

TRANSACTIONS = int(os.environ.get("PASSPORT_BENCH_BASELINE_TX", "50000"))
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"


def put_str(h, s):
    b = s.encode()
    h.update(struct.pack(">Q", len(b)))
    h.update(b)


def chain_hash(prev, seq, at, actor, request, action, details):
    h = hashlib.sha256()
    h.update(prev)
    h.update(struct.pack(">Qq", seq, at))
    put_str(h, actor)
    if request is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01")
        put_str(h, request)
    put_str(h, action)
    put_str(h, details)
    return h.digest()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "baseline.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        for migration in sorted(MIGRATIONS.glob("*.sql")):
            conn.executescript(migration.read_text())

        at = 1_790_000_000_000
        prev = bytes(32)
        started = time.perf_counter()
        for n in range(1, TRANSACTIONS + 1):
            request = f"AR-{n}"
            body = json.dumps({"id": n, "state": "pending", "requester": "dev1", "ticket": "ticket#123"})
            details = json.dumps({"summary": f"requested by dev1 for 2h on i-0123456789abcdef0 (ticket#123)"})
            notice = json.dumps({"audit": {"text": f"{request} requested by dev1"}})
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO requests (id, state, requester, created_at, updated_at, expires_at, open_grants, body) "
                "VALUES (?, 'pending', 'dev1', ?, ?, NULL, 0, ?)",
                (n, at, at, body),
            )
            digest = chain_hash(prev, n, at, "dev1", request, "requested", details)
            conn.execute(
                "INSERT INTO logbook (seq, at, actor, request, action, details, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (n, at, "dev1", request, "requested", details, digest),
            )
            conn.execute(
                "INSERT INTO outbox (surface, lane, request, notice, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                ("null", "audit", n, notice, at, at),
            )
            conn.execute("COMMIT")
            prev = digest
        elapsed = time.perf_counter() - started
        conn.close()
    print(f"{TRANSACTIONS / elapsed:.0f} transactions/s ({TRANSACTIONS} in {elapsed:.2f} s)")


if __name__ == "__main__":
    main()

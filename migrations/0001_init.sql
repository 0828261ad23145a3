-- Access requests. The whole request is kept as JSON in `body`; the columns
-- beside it are copies for indexing and queries.
CREATE TABLE requests (
    id          INTEGER PRIMARY KEY,          -- the n of AR-n
    state       TEXT    NOT NULL,
    requester   TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,             -- ms since the epoch, UTC
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    open_grants INTEGER NOT NULL DEFAULT 0,   -- grants that may still hold a user
    body        TEXT    NOT NULL
) STRICT;
CREATE INDEX requests_by_state ON requests (state, id);
CREATE INDEX requests_by_requester ON requests (requester, id);

-- The Logbook: append-only and hash-chained (see src/domain/logbook.rs).
CREATE TABLE logbook (
    seq     INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    request TEXT,
    action  TEXT    NOT NULL,
    details TEXT    NOT NULL,
    hash    BLOB    NOT NULL
) STRICT;
CREATE INDEX logbook_by_request ON logbook (request, seq);
CREATE INDEX logbook_by_time ON logbook (at);

CREATE TRIGGER logbook_refuses_update BEFORE UPDATE ON logbook
BEGIN
    SELECT RAISE(ABORT, 'the Logbook is append-only');
END;
CREATE TRIGGER logbook_refuses_delete BEFORE DELETE ON logbook
BEGIN
    SELECT RAISE(ABORT, 'the Logbook is append-only');
END;

-- Notices waiting for, or done with, delivery to a chat surface.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    surface         TEXT    NOT NULL,
    lane            TEXT    NOT NULL,
    request         INTEGER,
    notice          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    dead_at         INTEGER,
    last_error      TEXT
) STRICT;
CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered_at IS NULL AND dead_at IS NULL;

-- Timers and jobs. A row is deleted in the transaction that acts on it.
CREATE TABLE timers (
    id       INTEGER PRIMARY KEY,
    request  INTEGER NOT NULL REFERENCES requests (id),
    kind     TEXT    NOT NULL,
    due_at   INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX timers_by_due ON timers (due_at);
CREATE INDEX timers_by_request ON timers (request, kind);

-- Where each request's card was posted on each surface.
CREATE TABLE chat_refs (
    request INTEGER NOT NULL REFERENCES requests (id),
    surface TEXT    NOT NULL,
    channel TEXT    NOT NULL,
    message TEXT    NOT NULL,
    PRIMARY KEY (request, surface)
) STRICT;

-- Timer ids are never given out twice. The scheduler claims due timers by id
-- and deletes a timer by id when it acts on it; with ids reused, a timer
-- created after another was deleted could be taken for it, and deleted
-- unfired. AUTOINCREMENT keeps each id for one timer only.
CREATE TABLE timers_unique (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    request  INTEGER NOT NULL REFERENCES requests (id),
    kind     TEXT    NOT NULL,
    due_at   INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO timers_unique (id, request, kind, due_at, attempts)
    SELECT id, request, kind, due_at, attempts FROM timers;
DROP TABLE timers;
ALTER TABLE timers_unique RENAME TO timers;
CREATE INDEX timers_by_due ON timers (due_at);
CREATE INDEX timers_by_request ON timers (request, kind);

-- Signed chat requests already acted on: Slack slash commands and clicks by
-- trigger_id, Discord interactions by id. A signature is accepted for 5
-- minutes either side of its timestamp, so each key is kept until that window
-- has closed (expires_at), and the same signed request replayed after a
-- restart, or to another process on this database, is refused. The reconcile
-- job deletes expired keys.
CREATE TABLE signed_requests (
    key        TEXT    PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX signed_requests_by_expiry ON signed_requests (expires_at);

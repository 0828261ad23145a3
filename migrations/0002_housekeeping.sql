-- Requesters' SSH public keys, installed on Linux instances with their access.
CREATE TABLE ssh_keys (
    user        TEXT    PRIMARY KEY,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

-- Leases, so that only one process runs the scheduler on a database.
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

-- When each scheduled job (reconciliation, digest, checkpoint) runs next.
CREATE TABLE jobs (
    name     TEXT    PRIMARY KEY,
    schedule TEXT    NOT NULL,
    next_run INTEGER NOT NULL
) STRICT;

-- Finding the request from a reply in its card's thread.
CREATE INDEX chat_refs_by_message ON chat_refs (surface, channel, message);

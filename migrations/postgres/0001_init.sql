-- Passport's schema on PostgreSQL: the end state of the SQLite migrations in
-- migrations/ (0001 to 0015), with the same tables and columns, plus what
-- several processes sharing one database need (the outbox's claims). Times
-- are milliseconds since the epoch, UTC, as on SQLite. A migration once
-- released is never edited: a change is a new file.

-- Access requests. The whole request is kept as JSON in `body`; the columns
-- beside it are copies for indexing and queries.
CREATE TABLE requests (
    id          BIGINT  PRIMARY KEY,          -- the n of AR-n
    state       TEXT    NOT NULL,
    requester   TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    expires_at  BIGINT,
    open_grants BIGINT  NOT NULL DEFAULT 0,   -- grants that may still hold a user
    -- Moves on with every change: an update writes only over the version it read.
    version     BIGINT  NOT NULL DEFAULT 0,
    -- Text, not jsonb: read back exactly as written.
    body        TEXT    NOT NULL
);
CREATE INDEX requests_by_state ON requests (state, id);
CREATE INDEX requests_by_requester ON requests (requester, id);
CREATE INDEX requests_pending_by_requester ON requests (requester) WHERE state = 'pending';
CREATE INDEX requests_holding_users ON requests (expires_at) WHERE open_grants > 0;

-- The Logbook: append-only and hash-chained (see src/domain/logbook.rs).
-- Appends are serialised by an advisory lock held to the end of the writing
-- transaction (src/adapters/postgres/logbook.rs), so `seq` runs without
-- gaps or forks whichever process writes.
CREATE TABLE logbook (
    seq     BIGINT  PRIMARY KEY,
    at      BIGINT  NOT NULL,
    actor   TEXT    NOT NULL,
    request TEXT,
    action  TEXT    NOT NULL,
    details TEXT    NOT NULL,                 -- hashed as written: text, not jsonb
    hash    BYTEA   NOT NULL
);
CREATE INDEX logbook_by_request ON logbook (request, seq);
CREATE INDEX logbook_by_time ON logbook (at);
CREATE INDEX logbook_key_switches ON logbook (seq) WHERE action = 'logbook_keyed';

CREATE FUNCTION logbook_refuses_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Logbook is append-only';
END;
$$;
CREATE TRIGGER logbook_refuses_update BEFORE UPDATE ON logbook
    FOR EACH ROW EXECUTE FUNCTION logbook_refuses_change();
CREATE TRIGGER logbook_refuses_delete BEFORE DELETE ON logbook
    FOR EACH ROW EXECUTE FUNCTION logbook_refuses_change();
CREATE TRIGGER logbook_refuses_truncate BEFORE TRUNCATE ON logbook
    FOR EACH STATEMENT EXECUTE FUNCTION logbook_refuses_change();

-- Notices waiting for, or done with, delivery to a chat surface. A process
-- delivering a lane claims its notices (`claimed_by` until `claimed_until`),
-- so no other process sends them meanwhile; a claim that runs out (its
-- process died) leaves them to the next.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    surface         TEXT    NOT NULL,
    lane            TEXT    NOT NULL,
    request         BIGINT,
    notice          TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    delivered_at    BIGINT,
    dead_at         BIGINT,
    last_error      TEXT,
    claimed_by      TEXT,
    claimed_until   BIGINT
);
CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_claimed ON outbox (surface, lane)
    WHERE claimed_by IS NOT NULL AND delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_set_aside ON outbox (id) WHERE dead_at IS NOT NULL AND delivered_at IS NULL;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;

-- Every transaction that queues notices tells every process listening (at
-- its commit, once however many it queued), so that the process delivering
-- starts their lanes at once whichever process committed them.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('passport_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_queued AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Timers and jobs. A row is deleted in the transaction that acts on it; a
-- sequence never gives an id out twice.
CREATE TABLE timers (
    id       BIGSERIAL PRIMARY KEY,
    request  BIGINT  NOT NULL REFERENCES requests (id),
    kind     TEXT    NOT NULL,
    due_at   BIGINT  NOT NULL,
    attempts BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX timers_by_due ON timers (due_at);
CREATE INDEX timers_by_request ON timers (request, kind);

-- Where each request's card was posted on each surface.
CREATE TABLE chat_refs (
    request BIGINT  NOT NULL REFERENCES requests (id),
    surface TEXT    NOT NULL,
    channel TEXT    NOT NULL,
    message TEXT    NOT NULL,
    PRIMARY KEY (request, surface)
);
CREATE INDEX chat_refs_by_surface_message ON chat_refs (surface, message);

-- Requesters' SSH public keys. The column keeps SQLite's name, quoted
-- because `user` is a reserved word here.
CREATE TABLE ssh_keys (
    "user" TEXT PRIMARY KEY,
    key    TEXT NOT NULL
);

-- Leases, so that only one process runs the scheduler on a database.
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL
);

-- When each scheduled job (reconciliation, digest, checkpoint) runs next.
CREATE TABLE jobs (
    name     TEXT    PRIMARY KEY,
    schedule TEXT    NOT NULL,
    next_run BIGINT  NOT NULL
);

-- SSM Run Commands sent by the AWS provisioner, so that after a restart it
-- resumes polling a command still in flight instead of sending it again.
CREATE TABLE ssm_commands (
    command_id  TEXT    PRIMARY KEY,
    request     BIGINT  NOT NULL,             -- the n of AR-n
    operation   TEXT    NOT NULL,             -- grant | revoke
    document    TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,             -- hash of what was asked, without the expiry
    expires_at  BIGINT,                       -- unix seconds sent as ExpiresAt (grants)
    sent_at     BIGINT  NOT NULL
);
CREATE INDEX ssm_commands_by_request ON ssm_commands (request, sent_at);

-- One row per instance a command was sent to; `status` stays NULL until the
-- invocation has settled.
CREATE TABLE ssm_invocations (
    command_id TEXT    NOT NULL REFERENCES ssm_commands (command_id),
    instance   TEXT    NOT NULL,
    status     TEXT,
    ok         BOOLEAN,
    detail     TEXT,
    settled_at BIGINT,
    PRIMARY KEY (command_id, instance)
);

-- Direct messages that carried a Windows password, deleted from the chat when
-- due. The row says where the message is, never what it said.
CREATE TABLE password_messages (
    id         BIGSERIAL PRIMARY KEY,
    request    BIGINT  NOT NULL REFERENCES requests (id),
    instance   TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    surface    TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    message    TEXT    NOT NULL,
    sent_at    BIGINT  NOT NULL,
    due_at     BIGINT  NOT NULL,
    attempts   BIGINT  NOT NULL DEFAULT 0     -- failed deletions
);
CREATE INDEX password_messages_by_due ON password_messages (due_at);

-- Terminals signing in through chat and the API tokens they receive, by
-- SHA-256 hash only.
CREATE TABLE logins (
    id              TEXT    PRIMARY KEY,      -- lg_…, not a secret
    code_hash       TEXT    NOT NULL,
    secret_hash     TEXT    NOT NULL,         -- of the poll secret
    host            TEXT    NOT NULL,
    client          TEXT    NOT NULL,
    address         TEXT    NOT NULL,
    started_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    state           TEXT    NOT NULL,         -- pending, confirmed, collected, cancelled
    claimed_by      TEXT,
    claimed_handle  TEXT,
    claimed_surface TEXT
);
CREATE INDEX logins_by_code ON logins (code_hash);

CREATE TABLE api_tokens (
    id               BIGSERIAL PRIMARY KEY,
    token_hash       TEXT    NOT NULL UNIQUE,
    login            TEXT    NOT NULL REFERENCES logins (id),
    user_id          TEXT    NOT NULL,
    handle           TEXT    NOT NULL,
    surface          TEXT    NOT NULL,
    issued_at        BIGINT  NOT NULL,
    expires_at       BIGINT  NOT NULL,
    revoked_at       BIGINT,
    refusal_recorded BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX api_tokens_by_user ON api_tokens (user_id);

-- Delivery keys already acted on (signed Slack commands and clicks, Discord
-- interactions, Slack events), each kept until it can no longer come again;
-- shared by every process on the database.
CREATE TABLE seen_keys (
    key        TEXT    PRIMARY KEY,
    expires_at BIGINT  NOT NULL
);
CREATE INDEX seen_keys_by_expiry ON seen_keys (expires_at);

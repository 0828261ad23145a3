-- Terminals signing in through chat (`passport login`) and the API tokens
-- they receive. Codes, poll secrets and tokens are kept only as SHA-256
-- hashes: nothing here lets anyone read one back.
CREATE TABLE logins (
    id            TEXT    PRIMARY KEY,             -- lg_…, not a secret
    code_hash     TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL,                -- of the poll secret
    host          TEXT    NOT NULL,
    client        TEXT    NOT NULL,
    address       TEXT    NOT NULL,
    started_at    INTEGER NOT NULL,                -- ms since the epoch, UTC
    expires_at    INTEGER NOT NULL,
    state         TEXT    NOT NULL,                -- pending, confirmed, collected, cancelled
    claimed_by    TEXT,                            -- the chat user who typed the code
    claimed_handle TEXT,
    claimed_surface TEXT
) STRICT;
CREATE INDEX logins_by_code ON logins (code_hash);

CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash    TEXT    NOT NULL UNIQUE,
    login         TEXT    NOT NULL REFERENCES logins (id),
    user_id       TEXT    NOT NULL,
    handle        TEXT    NOT NULL,
    surface       TEXT    NOT NULL,
    issued_at     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    refusal_recorded INTEGER NOT NULL DEFAULT 0    -- a refusal is in the Logbook already
) STRICT;
CREATE INDEX api_tokens_by_user ON api_tokens (user_id);

-- SSM Run Commands sent by the AWS provisioner, so that after a restart it
-- resumes polling a command still in flight instead of sending it again.
CREATE TABLE ssm_commands (
    command_id  TEXT    PRIMARY KEY,
    request     INTEGER NOT NULL,              -- the n of AR-n
    operation   TEXT    NOT NULL,              -- grant | revoke
    document    TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,              -- hash of what was asked, without the expiry
    expires_at  INTEGER,                       -- unix seconds sent as ExpiresAt (grants)
    sent_at     INTEGER NOT NULL               -- ms since the epoch, UTC
) STRICT;
CREATE INDEX ssm_commands_by_request ON ssm_commands (request, sent_at);

-- One row per instance a command was sent to; `status` stays NULL until the
-- invocation has settled.
CREATE TABLE ssm_invocations (
    command_id TEXT    NOT NULL REFERENCES ssm_commands (command_id),
    instance   TEXT    NOT NULL,
    status     TEXT,
    ok         INTEGER,
    detail     TEXT,
    settled_at INTEGER,
    PRIMARY KEY (command_id, instance)
) STRICT;
CREATE INDEX ssm_invocations_by_instance ON ssm_invocations (instance, command_id);

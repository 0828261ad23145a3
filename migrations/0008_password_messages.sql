-- Direct messages that carried a Windows password, deleted from the chat when
-- due (the timer of each one is its row, so a restart still deletes it). The
-- row says where the message is, never what it said.
CREATE TABLE password_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    request    INTEGER NOT NULL REFERENCES requests (id),
    instance   TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    surface    TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    message    TEXT    NOT NULL,
    sent_at    INTEGER NOT NULL,              -- ms since the epoch, UTC
    due_at     INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,    -- failed deletions
    last_error TEXT
) STRICT;
CREATE INDEX password_messages_by_due ON password_messages (due_at);

-- Keys of chat deliveries that platforms redeliver when unanswered (Slack's
-- Events API), kept a day so that a redelivery after a restart acts once.
CREATE TABLE deliveries (
    key     TEXT    PRIMARY KEY,
    seen_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX deliveries_by_time ON deliveries (seen_at);

-- One table of delivery keys already acted on, each kept until it can no
-- longer come again, and one way to forget them: the reconcile job deletes
-- the expired ones. It holds the signed Slack commands and clicks and the
-- Discord interactions until their signature window has closed (the table
-- was `signed_requests`), and now also the Slack events, which Slack may
-- redeliver, for a day: they were in `deliveries`, purged on every write.
ALTER TABLE signed_requests RENAME TO seen_keys;
DROP INDEX signed_requests_by_expiry;
CREATE INDEX seen_keys_by_expiry ON seen_keys (expires_at);

INSERT OR IGNORE INTO seen_keys (key, expires_at)
    SELECT key, seen_at + 86400000 FROM deliveries;
DROP TABLE deliveries;

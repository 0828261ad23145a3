-- The order commands of one request were recorded in, for when two share a
-- millisecond (SQLite orders them by rowid; PostgreSQL has none).
ALTER TABLE ssm_commands ADD COLUMN seq BIGSERIAL;
DROP INDEX ssm_commands_by_request;
CREATE INDEX ssm_commands_by_request ON ssm_commands (request, sent_at, seq);

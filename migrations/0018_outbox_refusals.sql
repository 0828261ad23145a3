-- Refusals counted apart from attempts: a notice is set aside after
-- repeated refusals only, however many temporary failures came first
-- (attempts keep setting the retry's backoff).
ALTER TABLE outbox ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;

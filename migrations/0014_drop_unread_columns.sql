-- Columns written and never read. A user's key fingerprint is computed from
-- the key when it is needed; who revoked a token is in the Logbook's
-- `logout` event, written in the same transaction; why a password message
-- could not be deleted yet is logged with each retry.
ALTER TABLE ssh_keys DROP COLUMN fingerprint;
ALTER TABLE ssh_keys DROP COLUMN updated_at;
ALTER TABLE api_tokens DROP COLUMN revoked_by;
ALTER TABLE password_messages DROP COLUMN last_error;

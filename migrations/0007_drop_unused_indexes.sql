-- Indexes no query uses, which cost a write on every insert:
-- Slack's thread lookup (surface, channel, message) is served by
-- chat_refs_by_surface_message (message ids are near unique within a
-- surface), and SSM invocations are only read by command id (their key).
DROP INDEX chat_refs_by_message;
DROP INDEX ssm_invocations_by_instance;

-- When an SSM invocation settled was written and never read: pruning goes by
-- when the command was sent, and the Logbook has the time of each grant's and
-- removal's outcome.
ALTER TABLE ssm_invocations DROP COLUMN settled_at;

-- A lane that delivered all it was read goes on with its own next notices;
-- this finds them without walking the other lanes' backlog.
CREATE INDEX outbox_lane ON outbox (surface, lane, id) WHERE delivered_at IS NULL AND dead_at IS NULL;

-- /metrics reads the first two at every scrape; without the indexes each read would
-- scan tables that grow without bound (requests, outbox).

-- Requests that may still hold a user on an instance: removals overdue.
CREATE INDEX requests_holding_users ON requests (expires_at) WHERE open_grants > 0;

-- Notices set aside after repeated failures.
CREATE INDEX outbox_set_aside ON outbox (id) WHERE dead_at IS NOT NULL AND delivered_at IS NULL;

-- Delivered notices older than [store] outbox_retention are pruned by reconciliation.
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;

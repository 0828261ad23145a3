-- Creating a request counts the requester's pending requests (the per-person cap),
-- inside the transaction that creates it. Through requests_by_requester that count
-- reads every request the person ever made; this index holds only the pending ones.
CREATE INDEX requests_pending_by_requester ON requests (requester) WHERE state = 'pending';

-- The Logbook's switches to a key (action 'logbook_keyed'): every append reads
-- the last one to know how to link the next event, and verification reads
-- them all to know where each part of the chain starts. A partial index holds
-- only those few rows, so neither reads the whole Logbook.
CREATE INDEX logbook_key_switches ON logbook (seq) WHERE action = 'logbook_keyed';

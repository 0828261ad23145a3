-- Discord message ids are unique across channels, and a thread's channel id is
-- its card's message id: threads are looked up by message id alone.
CREATE INDEX chat_refs_by_surface_message ON chat_refs (surface, message);

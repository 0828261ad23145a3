-- Which Passport releases can run on this database. From this migration on,
-- each migration's first line says whether older releases can go on running
-- on the schema it leaves (two replicas rolled one at a time, or a rollback
-- after an upgrade, run one beside or after a newer one). One they cannot
-- raises `compatible_from` to its own version. A release whose newest
-- migration is at least `compatible_from` runs on a database a newer release
-- migrated; any other refuses to start and says what to run instead
-- (`src/adapters/schema.rs`).
CREATE TABLE passport_schema (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    compatible_from BIGINT NOT NULL
);
INSERT INTO passport_schema (id, compatible_from) VALUES (1, 6);

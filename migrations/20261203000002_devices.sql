-- Devices and their one API key. Only the SHA-256 of the key's secret is stored; the key id is
-- the public part that lets a gateway find the record without scanning.
CREATE TABLE devices (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    enabled      boolean NOT NULL DEFAULT true,
    key_id       text NOT NULL,
    key_sha256   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz,
    CONSTRAINT devices_key_id_key UNIQUE (key_id)
);
CREATE INDEX devices_created_at_idx ON devices (created_at, id);

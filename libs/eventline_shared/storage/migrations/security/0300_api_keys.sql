-- API keys (see eventline_shared.auth). Only a SHA-256 hash of each key's
-- secret is stored; the key id is public and names the key in logs and the CLI.
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    secret_hash bytea NOT NULL,
    -- Any of 'ingest', 'read', 'admin'; admin allows everything.
    scopes      text[] NOT NULL CHECK (scopes <@ ARRAY['ingest', 'read', 'admin']::text[] AND cardinality(scopes) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Secrets shared by every replica of every service, each made once by the first
-- process that needs it (INSERT ... ON CONFLICT DO NOTHING, then read back).
-- 'page_tokens': the HMAC-SHA256 key of page tokens (eventline_shared.paging).
-- Deleting a row rotates its secret at the next start of the services; page
-- tokens signed with the old one are then INVALID_ARGUMENT.
CREATE TABLE signing_keys (
    name text PRIMARY KEY,
    secret bytea NOT NULL CHECK (octet_length(secret) >= 16),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A fencing token on each pending delivery's lease (issue 11: no message sent twice).
--
-- A sender holds a pending delivery while its lease runs; another replica's recovery
-- takes over deliveries whose lease expired. A sender that was slow past its lease
-- (a long fan-out, a slow provider, a paused process) must not send or mark what was
-- taken from it: every take-over increments lease_token, the sender keeps the token it
-- got, and extending the lease and writing the outcome both require it unchanged.
ALTER TABLE deliveries ADD COLUMN lease_token bigint NOT NULL DEFAULT 0;

-- Erasure leaves no trace of the customer in campaign state (issue 10, item 8).
--
-- The fan-out cursor held the id of the last customer recorded, and outlived
-- that customer's erasure. The cursor is now derived from the ledger (the
-- highest customer id among the fan-out's deliveries), whose rows an erasure
-- deletes by cascade: nothing to scrub, nothing left behind.
ALTER TABLE campaign_fanouts DROP COLUMN after_customer_id;

-- How many erasures there have been (one row, no customer data). Ingestion
-- counts each erasure in its transaction; a service keeping copies outside
-- PostgreSQL (the campaign service's development message files) watches the
-- count and removes the copies of deliveries the ledger no longer has.
CREATE TABLE customer_erasures (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    erasures  bigint NOT NULL DEFAULT 0
);
INSERT INTO customer_erasures DEFAULT VALUES;

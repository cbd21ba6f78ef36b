-- Every key of the delivery ledger starts with customer_id (issue 11, item 8).
--
-- UNIQUE (delivery_id) alone was a key without the customer: a sharded PostgreSQL
-- (Citus, distributing customer-owned tables by customer_id) cannot enforce it, so
-- create_distributed_table('deliveries', 'customer_id') refused the table. The ids
-- still come from one identity sequence, so they stay unique across customers; the
-- constraint now says "unique per customer", which a shard can check on its own,
-- and every statement that changes a delivery names its customer too.
--
-- The new key's index also serves a customer's deliveries newest first, so the
-- index that did that goes.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_delivery_id_key;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_customer_delivery_key UNIQUE (customer_id, delivery_id);
DROP INDEX deliveries_by_customer;

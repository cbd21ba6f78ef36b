-- Suppressions and provider reports made ready for sharding by customer
-- (issue 11, item 8), fixing what 0260 created.
--
-- suppressions: a suppression is about an address, whoever holds it, so the
-- table is shared (a Citus reference table, read by every send) keyed by
-- (channel, address) and has no customer_id. 0260's customer_id column (a
-- nullable foreign key to customers, whose cascade erased the suppressions a
-- customer's reports caused) made it a customer-owned table whose key lacked
-- customer_id. Erasure now deletes those suppressions explicitly: the ones
-- whose delivery_id is one of the customer's reported deliveries (a
-- suppression caused by a report keeps the report's delivery_id; one added by
-- hand has none and stays until lifted).
ALTER TABLE suppressions DROP COLUMN customer_id;  -- drops suppressions_by_customer and the foreign key
CREATE INDEX suppressions_by_delivery ON suppressions (delivery_id) WHERE delivery_id IS NOT NULL;

-- delivery_events: a provider's event id names one report about one message,
-- sent to one customer, so "once per customer" is the same dedupe, and a shard
-- can check it on its own.
DROP INDEX delivery_events_once;
CREATE UNIQUE INDEX delivery_events_once ON delivery_events (customer_id, provider_event_id)
    WHERE provider_event_id IS NOT NULL;

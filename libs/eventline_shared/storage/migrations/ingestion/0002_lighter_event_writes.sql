-- Ingestion writes less per event (issue 16; figures in docs/performance.md).
--
-- The context GIN index of 0001 answered context @> '{"item_id": 42}' whatever
-- the event's name. Segmentation's compiler no longer asks that: equalities
-- go through customer_events_named_context (0101), other predicates filter the
-- rows found by name or by customer (customer_events_by_name,
-- customer_events_by_customer_name). Every stored event paid for an index
-- nothing reads: measured with EXPLAIN (ANALYZE, WAL) on the storing
-- statement, 1,528 -> 1,118 WAL bytes and 8.0 -> 7.0 WAL records per event.
DROP INDEX customer_events_context;

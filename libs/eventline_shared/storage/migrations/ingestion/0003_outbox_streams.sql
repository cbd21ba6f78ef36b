-- Outbox rows name the partition stream their entries are for (issue 11, item 4).
--
-- A relay publishes only its own streams' rows: a second deployment with
-- another EVENTLINE_STREAM on the same database no longer publishes the first
-- one's events to its stream, and each partition is published by one relay at
-- a time, in id order (see eventline_ingestion/relay.py). Rows written before
-- this migration (stream '') are published by relays of a one-partition
-- stream, as before.
ALTER TABLE event_outbox ADD COLUMN stream text NOT NULL DEFAULT '';

CREATE INDEX event_outbox_by_stream ON event_outbox (stream, id);

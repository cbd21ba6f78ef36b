-- Journeys advance in batches (issue 14): each step updates its instance's row (the step
-- it is at) and its own row in journey_steps (the outcome). Room left on every page lets
-- those updates stay on the page (heap-only tuples): no new entries in the tables' indexes
-- (four on journey_instances, two on journey_steps) and less to vacuum. Pages written from
-- now on keep it; the updates that change an indexed column (an instance ending: status)
-- still write index entries.
ALTER TABLE journey_instances SET (fillfactor = 70);
ALTER TABLE journey_steps SET (fillfactor = 70);

-- Segmentation: "event X with context field = value" in one index lookup.
--
-- The context GIN index of 0001 finds every event with item_id = 42 whatever
-- its name, so "X with item_id = 42 in the last 30 days" read tens of
-- thousands of heap rows of other events (bench/segments.py, shape 2, measured
-- 80-600 ms on 10M events). Indexing {name: context} lets one containment
-- test, {"X": {"item_id": 42}}, find exactly the events of that name with
-- those equalities (measured 15x faster on the quick data set).

-- jsonb_build_object is only STABLE in general (it converts any type); for a
-- text key and a jsonb value it is immutable, which an index expression needs.
CREATE FUNCTION eventline_named_context(name text, context jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT jsonb_build_object(name, context) $$;

CREATE INDEX customer_events_named_context
    ON customer_events USING gin (eventline_named_context(name, context) jsonb_path_ops);

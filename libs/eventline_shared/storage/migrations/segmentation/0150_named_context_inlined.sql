-- The storing statement and COPY paid a SQL function call per stored event for
-- customer_events_named_context (issue 16, docs/performance.md "PostgreSQL's
-- share, by function"): as 0101 declared it (STRICT, its body only STABLE) the
-- planner cannot inline eventline_named_context, so every index entry ran the
-- SQL function executor (fmgr_sql: an executor started and ended per row),
-- ~1.5 us of a backend's CPU per event, 5 % of the storing statement's and 9 %
-- of a COPY row's.
--
-- The same value from immutable built-ins, in a body the planner inlines (the
-- function not STRICT: the inliner refuses a strict function whose body has an
-- ARRAY[] constructor): jsonb_set of a one-key path on '{}' makes {name: context},
-- byte for byte what jsonb_build_object(name, context) made, for every name and
-- context (name and context are NOT NULL in customer_events, so strictness
-- changed nothing the index holds). The index keeps its entries: same values.
--
-- Readers (the segmentation compiler's equalities, bench/segments.py) still write
-- eventline_named_context(e.name, e.context) @> ...; the planner inlines it there
-- as it does in the index's expression, and the two still match.
CREATE OR REPLACE FUNCTION eventline_named_context(name text, context jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT jsonb_set('{}'::jsonb, ARRAY[name], context) $$;

-- Sessions that loaded the index's expression before (other replicas, running)
-- hold it uninlined and would no longer match the inlined form of a reader's query
-- (a sequential scan) until their cache of the index is invalidated: this does
-- it (a catalog update of the index, no rewrite; it takes SHARE UPDATE EXCLUSIVE,
-- which inserts and reads do not wait for).
ALTER INDEX customer_events_named_context RESET (fastupdate);

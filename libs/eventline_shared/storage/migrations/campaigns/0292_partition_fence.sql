-- A fence per stream partition, so that a campaigns replica that stalled past its
-- partition lease cannot record a batch beside the new owner's (issue 11, item 3).
--
-- Every take-over of a partition raises its token (one more, returned to the new
-- owner) before the new owner processes anything; that update waits for the
-- previous owner's recording transactions in progress, which hold the row FOR
-- SHARE. Each recording transaction locks the row FOR SHARE (concurrent batches of
-- one owner do not block each other) and checks its owner's token against it
-- (eventline_partition_fence): a stale owner's transaction fails, its batch stays
-- pending in the stream for the new owner, nothing of it is sent.
--
-- Not customer data: one row per partition stream (its key names the deployment's
-- stream). Under Citus a coordinator-local table, locked on the node every
-- recording transaction runs through (docs/scaling.md).
CREATE TABLE partition_fences (
    partition_key text PRIMARY KEY,
    token bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- True when no partition is named (a batch read outside any lease: drain, tools) or
-- when held is the partition's current token; otherwise raises SQLSTATE EL409, so
-- that the statement (and its transaction) fails. A function, because SQL has no
-- way to raise: evaluated once per statement (an InitPlan), after the row is locked.
CREATE FUNCTION eventline_partition_fence(partition text, held bigint, current bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF partition IS NULL OR held = current THEN
        RETURN true;
    END IF;
    RAISE EXCEPTION 'partition % was taken over: token % is not its current one (%)', partition, held, current
        USING ERRCODE = 'EL409';
END
$$;

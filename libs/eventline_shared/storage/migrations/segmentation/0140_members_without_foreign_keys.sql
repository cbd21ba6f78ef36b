-- Real-time segment backfill (issue 13, third pass): writing a segment's members
-- no longer checks two foreign keys per row. Each check is a query locking the
-- referenced row (FOR KEY SHARE), about half of what a backfill of 18,000
-- members cost. What the keys' cascades did is done by statement triggers, and
-- what their checks guarded is guarded by locks every writer takes already:
--
-- * segments: every writer of members holds the segment's row FOR KEY SHARE
--   (MembershipRepository.keep_segments), so a DeleteSegment waits for it and
--   its trigger below then sees (and deletes) what it wrote; a writer that
--   comes after the deletion finds no segment and writes nothing.
-- * customers: an evaluation's members go with its transitions (and timers),
--   whose keys to customers still check the customer. A backfill writes
--   members alone, under the backfills' lock (exclusive, lock_backfills): a
--   deletion of customers (erasure) takes that lock in shared mode before it
--   deletes anything, so it waits for a running backfill (whose members its
--   trigger below then deletes) and a backfill that starts later waits for it
--   (and reads the customers after it committed).
--
-- Safe on a live database and in a rolling upgrade: one transaction, no table
-- rewritten; code of the previous version takes the same locks, and the
-- triggers keep deleting what the cascades deleted whichever version deletes.

-- A deletion of customers (erasure) never runs with a backfill (see above).
CREATE FUNCTION eventline_wait_for_backfills() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('segment-backfill', 0));
    RETURN NULL;
END
$$;

-- The erased customers' members, one index probe per real-time segment and customer
-- (members exist only for real-time segments; no index leads with customer_id).
CREATE FUNCTION eventline_delete_erased_members() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM segment_members m USING segment_realtime r, erased e
    WHERE m.segment_id = r.segment_id AND m.customer_id = e.customer_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION eventline_delete_segments_members() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM segment_members m USING deleted d WHERE m.segment_id = d.segment_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER customers_wait_for_backfills BEFORE DELETE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION eventline_wait_for_backfills();
CREATE TRIGGER customers_delete_members AFTER DELETE ON customers
    REFERENCING OLD TABLE AS erased
    FOR EACH STATEMENT EXECUTE FUNCTION eventline_delete_erased_members();
CREATE TRIGGER segments_delete_members AFTER DELETE ON segments
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION eventline_delete_segments_members();

ALTER TABLE segment_members
    DROP CONSTRAINT segment_members_segment_id_fkey,
    DROP CONSTRAINT segment_members_customer_id_fkey;

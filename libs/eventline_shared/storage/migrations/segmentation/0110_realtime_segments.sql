-- Real-time segments (issue 13): stored membership, its transition log and the
-- timers of the instants at which time alone changes it.

ALTER TABLE segments
    ADD COLUMN realtime  boolean NOT NULL DEFAULT false,
    ADD COLUMN time_zone text NOT NULL DEFAULT '';

-- One row per real-time segment: its backfill's progress, its size and the
-- cursor of its latest transition. Recording a transition updates this row,
-- so a segment's transitions commit in cursor order (a watcher reading past
-- cursor n never later finds a transition below n committed).
CREATE TABLE segment_realtime (
    segment_id     text PRIMARY KEY REFERENCES segments ON DELETE CASCADE,
    -- Where the backfill is, in byte order of customer ids: customers up to it
    -- (inclusive) are kept incrementally; NULL when the backfill is done.
    backfill_after text COLLATE "C" DEFAULT '',
    -- Changes whenever the filter or time zone changes (the backfill restarts).
    generation     bigint NOT NULL DEFAULT 1,
    members        bigint NOT NULL DEFAULT 0,
    last_cursor    bigint NOT NULL DEFAULT 0
);

CREATE TABLE segment_members (
    segment_id  text NOT NULL REFERENCES segments ON DELETE CASCADE,
    customer_id text NOT NULL REFERENCES customers ON DELETE CASCADE,
    entered_at  timestamptz NOT NULL,
    PRIMARY KEY (segment_id, customer_id)
);

CREATE INDEX segment_members_by_id_bytes ON segment_members (segment_id, (customer_id COLLATE "C"));

-- The size is kept by the rows themselves, so that an erasure (a cascade from
-- customers, which ingestion runs) keeps it exact too.
CREATE FUNCTION eventline_count_segment_members() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE segment_realtime SET members = members + 1 WHERE segment_id = NEW.segment_id;
        RETURN NEW;
    END IF;
    UPDATE segment_realtime SET members = members - 1 WHERE segment_id = OLD.segment_id;
    RETURN OLD;
END
$$;

CREATE TRIGGER segment_members_count AFTER INSERT OR DELETE ON segment_members
    FOR EACH ROW EXECUTE FUNCTION eventline_count_segment_members();

-- Every enter and exit, for WatchSegment: cursors increase per segment.
CREATE TABLE segment_transitions (
    segment_id  text NOT NULL REFERENCES segments ON DELETE CASCADE,
    cursor      bigint NOT NULL,
    customer_id text NOT NULL REFERENCES customers ON DELETE CASCADE,
    entered     boolean NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (segment_id, cursor, customer_id)
);

-- The next instant at which time alone may change a customer's membership
-- (eventline_shared.timers: due rows are claimed by any replica, fired once).
CREATE TABLE segment_timers (
    segment_id    text NOT NULL REFERENCES segments ON DELETE CASCADE,
    customer_id   text NOT NULL REFERENCES customers ON DELETE CASCADE,
    due_at        timestamptz NOT NULL,
    claimed_until timestamptz,
    PRIMARY KEY (segment_id, customer_id)
);

CREATE INDEX segment_timers_due ON segment_timers (due_at);

-- Real-time segment backfill in one statement (issue 13): the backfill no longer
-- writes a timer per customer whose membership time can still move. It leaves
-- one forecast sweep per segment instead, which the scheduler walks in pages
-- after it, setting those customers' timers (eventline_segmentation.realtime).

-- One row per segment whose backfill left forecasts to compute: the backfill's
-- generation and instant (every customer is evaluated at it, so a change due
-- since then is replayed at its own instant), the customers to walk (filled by
-- the first page, earliest-moving first), how far the walk is, and a lease so
-- that one replica at a time walks it.
CREATE TABLE segment_forecast_sweeps (
    segment_id    text PRIMARY KEY REFERENCES segments ON DELETE CASCADE,
    generation    bigint NOT NULL,
    swept_at      timestamptz NOT NULL,
    customers     text[],
    position      integer NOT NULL DEFAULT 0,
    claimed_until timestamptz
);

-- The customers an event or a timer evaluated while their segment's sweep was
-- running: the evaluation set their timer (or found none), so the sweep leaves
-- them alone. Rows of a finished or restarted sweep are ignored, then deleted.
CREATE TABLE segment_sweep_seen (
    segment_id  text NOT NULL REFERENCES segments ON DELETE CASCADE,
    generation  bigint NOT NULL,
    customer_id text NOT NULL REFERENCES customers ON DELETE CASCADE,
    PRIMARY KEY (segment_id, generation, customer_id)
);

-- The backfill replaces a segment's members in one statement and sets the size
-- once (eventline.backfilling = 'on' for its transaction): counting every row
-- would update the segment's row once per member.
DROP TRIGGER segment_members_count ON segment_members;
CREATE TRIGGER segment_members_count AFTER INSERT OR DELETE ON segment_members
    FOR EACH ROW
    WHEN (current_setting('eventline.backfilling', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION eventline_count_segment_members();

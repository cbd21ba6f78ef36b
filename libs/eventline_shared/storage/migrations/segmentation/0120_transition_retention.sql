-- Transition-log pruning (issue 13): transitions older than the retention
-- (EVENTLINE_SEGMENTATION_TRANSITION_RETENTION_S) are deleted by cursor
-- prefix; a WatchSegment resuming from a cursor below `pruned_through` may
-- have missed some and is refused with FAILED_PRECONDITION.
ALTER TABLE segment_realtime
    ADD COLUMN pruned_through bigint NOT NULL DEFAULT 0;

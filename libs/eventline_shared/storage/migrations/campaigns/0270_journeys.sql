-- Journeys (issue 14): one instance per (customer, campaign, entry event), the steps
-- each instance ran (recorded once), and durable timers that wake instances up.
--
-- Customer-owned tables start their keys with customer_id and cascade on erasure.

-- A journey's steps (with its exit event and goal) as they were when instances
-- entered: instances finish on the version they started on, whatever later
-- UpdateCampaign calls change. version is a hash of the stored graph.
CREATE TABLE journey_versions (
    campaign_id text NOT NULL REFERENCES campaigns,
    version     text NOT NULL,
    -- The eventline.campaigns.v1.Campaign message holding the graph (steps,
    -- exit_event, goal, default_time_zone, quiet_hours, transactional).
    spec        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, version)
);

CREATE TABLE journey_instances (
    customer_id    text NOT NULL REFERENCES customers ON DELETE CASCADE,
    campaign_id    text NOT NULL REFERENCES campaigns,
    entry_event_id text NOT NULL,
    version        text NOT NULL,
    -- 1 active, 2 completed, 3 exited (the exit event), 4 cancelled (archived).
    status         smallint NOT NULL DEFAULT 1,
    -- The step the instance is at (while active) or ended at.
    step_id        text NOT NULL,
    -- The event name a wait_for_event step waits for; NULL otherwise.
    waiting_event  text,
    -- The split variant the customer was assigned to, if any.
    variant        text,
    -- The entry rule's slot: 'ever' (once ever, kept), 'active' (once at a time,
    -- cleared when the instance ends) or NULL (every time). Unique per customer
    -- and campaign, so concurrent triggers enter at most one instance.
    entry_slot     text,
    -- The trigger event (eventline.common.v1.Event): its context binds `$field`
    -- references and renders templates.
    trigger        bytea NOT NULL,
    -- A paused campaign holds its instances: the instant their timer was due.
    held_due_at    timestamptz,
    entered_at     timestamptz NOT NULL,
    finished_at    timestamptz,
    converted_at   timestamptz,
    PRIMARY KEY (customer_id, campaign_id, entry_event_id),
    UNIQUE (customer_id, campaign_id, entry_slot)
);

CREATE INDEX journey_instances_waiting ON journey_instances (customer_id, waiting_event)
    WHERE status = 1;
CREATE INDEX journey_instances_by_campaign ON journey_instances (campaign_id, status);

-- The steps an instance reached, once each (steps form no cycle): outcome is NULL
-- while the step runs or waits, then what it came to (sent, skipped, arrived,
-- timed_out, yes, no, variant name, done); reason says why (skip reasons,
-- quiet-hour deferrals).
CREATE TABLE journey_steps (
    customer_id    text NOT NULL REFERENCES customers ON DELETE CASCADE,
    campaign_id    text NOT NULL REFERENCES campaigns,
    entry_event_id text NOT NULL,
    step_id        text NOT NULL,
    outcome        text,
    reason         text NOT NULL DEFAULT '',
    deferred       boolean NOT NULL DEFAULT false,
    entered_at     timestamptz NOT NULL,
    finished_at    timestamptz,
    PRIMARY KEY (customer_id, campaign_id, entry_event_id, step_id)
);

CREATE INDEX journey_steps_by_campaign ON journey_steps (campaign_id, step_id);

-- When an instance's current step is due (a wait's end, a timeout, a deferral
-- by quiet hours, or now for steps that run at once): eventline_shared.storage.timers.
CREATE TABLE journey_timers (
    customer_id    text NOT NULL REFERENCES customers ON DELETE CASCADE,
    campaign_id    text NOT NULL,
    entry_event_id text NOT NULL,
    due_at         timestamptz NOT NULL,
    claimed_until  timestamptz,
    PRIMARY KEY (customer_id, campaign_id, entry_event_id)
);

CREATE INDEX journey_timers_due ON journey_timers (due_at);

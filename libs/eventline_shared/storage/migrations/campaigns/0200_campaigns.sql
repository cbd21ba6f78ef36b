-- Campaigns, the delivery ledger, frequency-cap accounting and fan-out progress.
--
-- Customer-owned tables (deliveries, campaign_sends) have customer_id first in
-- their primary key and refer to customers with ON DELETE CASCADE, so that
-- erasing a customer erases their deliveries too.

-- Every change of a campaign takes a new revision from this sequence; replicas
-- poll max(revision) to notice changes within a second.
CREATE SEQUENCE campaign_revisions;

CREATE TABLE campaigns (
    campaign_id   text PRIMARY KEY,
    display_name  text NOT NULL,
    -- eventline.campaigns.v1.CampaignState numbers: 1 draft, 2 active, 3 paused, 4 archived.
    state         smallint NOT NULL,
    -- The whole eventline.campaigns.v1.Campaign message (trigger, audience,
    -- actions, frequency cap) as protobuf; output-only fields are columns.
    spec          bytea NOT NULL,
    revision      bigint NOT NULL DEFAULT nextval('campaign_revisions'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    active_since  timestamptz
);

CREATE INDEX campaigns_by_creation ON campaigns (created_at DESC, campaign_id DESC);
CREATE INDEX campaigns_by_revision ON campaigns (revision);

-- The delivery ledger: one row per (customer, campaign, trigger event, channel),
-- written before the provider is called. delivery_id is the provider's
-- idempotency key.
CREATE TABLE deliveries (
    customer_id  text NOT NULL REFERENCES customers ON DELETE CASCADE,
    campaign_id  text NOT NULL REFERENCES campaigns,
    event_id     text NOT NULL,
    -- eventline.campaigns.v1.Channel numbers: 1 e-mail, 2 SMS, 3 push.
    channel      smallint NOT NULL,
    delivery_id  bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- eventline.campaigns.v1.DeliveryStatus numbers: 1 pending, 2 sent, 3 failed, 4 skipped.
    status       smallint NOT NULL,
    reason       text NOT NULL DEFAULT '',
    -- The rendered message (JSON) and where it goes, kept while pending so a
    -- crashed send is retried with exactly the same content and key.
    message      jsonb,
    attempts     integer NOT NULL DEFAULT 0,
    -- A pending row is being sent by someone until this time; after it, any
    -- replica may take it over (the previous sender crashed).
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, campaign_id, event_id, channel)
);

CREATE INDEX deliveries_by_campaign ON deliveries (campaign_id, delivery_id DESC);
CREATE INDEX deliveries_by_event ON deliveries (event_id, delivery_id DESC);
CREATE INDEX deliveries_by_customer ON deliveries (customer_id, delivery_id DESC);
CREATE INDEX deliveries_pending ON deliveries (lease_until) WHERE status = 1;

-- Frequency-cap accounting: one row per trigger event that sent (or is
-- sending) a campaign's messages to a customer. Counted under a transaction
-- advisory lock on (campaign, customer), so caps hold under concurrency.
CREATE TABLE campaign_sends (
    customer_id text NOT NULL REFERENCES customers ON DELETE CASCADE,
    campaign_id text NOT NULL REFERENCES campaigns,
    event_id    text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, campaign_id, event_id)
);

CREATE INDEX campaign_sends_window ON campaign_sends (customer_id, campaign_id, sent_at);

-- System-event fan-out progress: the audience is processed in customer id
-- order; after_customer_id is the last customer whose deliveries are recorded.
CREATE TABLE campaign_fanouts (
    campaign_id       text NOT NULL REFERENCES campaigns,
    event_id          text NOT NULL,
    after_customer_id text NOT NULL DEFAULT '',
    recorded          bigint NOT NULL DEFAULT 0,
    done              boolean NOT NULL DEFAULT false,
    started_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, event_id)
);

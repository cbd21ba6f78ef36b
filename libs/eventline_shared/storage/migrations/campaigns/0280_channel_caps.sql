-- Caps across campaigns and test sends (issue 14, items 6 and 8).
--
-- Numbered in a block of its own (028x) so that the journeys' changes of the
-- campaign tables (027x) do not collide with it.

-- A per-customer cap on each channel over every marketing campaign (those
-- whose Campaign.transactional is false): at most max_sends messages on the
-- channel within the sliding window. One row per capped channel; no row, no cap.
CREATE TABLE channel_caps (
    -- eventline.campaigns.v1.Channel numbers: 1 e-mail, 2 SMS, 3 push.
    channel     smallint PRIMARY KEY,
    max_sends   integer NOT NULL CHECK (max_sends > 0),
    window_s    double precision NOT NULL CHECK (window_s > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The marketing messages counted against the channel caps: one row per
-- (customer, channel, campaign, trigger event), written in the transaction that
-- records the delivery, under a transaction advisory lock on the customer (the
-- same for every campaign), so that replicas sending the same customer
-- different campaigns at once cannot both pass the cap. The key makes a
-- redelivered trigger count once. Rows older than the longest window are
-- removed as the customer's next ones are counted; the rest go with the
-- customer's erasure (cascade).
CREATE TABLE channel_sends (
    customer_id  text NOT NULL REFERENCES customers ON DELETE CASCADE,
    channel      smallint NOT NULL,
    campaign_id  text NOT NULL REFERENCES campaigns,
    event_id     text NOT NULL,
    sent_at      timestamptz NOT NULL,
    PRIMARY KEY (customer_id, channel, campaign_id, event_id)
);

CREATE INDEX channel_sends_window ON channel_sends (customer_id, channel, sent_at);

-- Test sends (SendTestMessage): a campaign's message rendered for a sample
-- customer and sent to an address the caller gave. Never part of the ledger,
-- the stats or the caps. The id comes from the ledger's sequence, so a
-- provider's idempotency key (the delivery id) never names two messages.
-- Erasure deletes the rows rendered for the customer and those addressed to
-- the customer's e-mail address, phone number or push tokens.
CREATE TABLE test_deliveries (
    test_delivery_id    bigint PRIMARY KEY DEFAULT nextval('deliveries_delivery_id_seq'),
    campaign_id         text NOT NULL REFERENCES campaigns,
    -- The journey step whose message was sent; empty for the campaign's actions.
    step_id             text NOT NULL DEFAULT '',
    channel             smallint NOT NULL,
    -- The address as the channel keeps it (e-mail addresses lower-cased).
    address             text NOT NULL,
    sample_customer_id  text NOT NULL,
    -- eventline.campaigns.v1.DeliveryStatus numbers: 1 pending (being sent), 2 sent, 3 failed, 4 skipped.
    status              smallint NOT NULL,
    reason              text NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX test_deliveries_by_campaign ON test_deliveries (campaign_id, test_delivery_id DESC);
CREATE INDEX test_deliveries_by_address ON test_deliveries (address);
CREATE INDEX test_deliveries_by_sample ON test_deliveries (sample_customer_id);

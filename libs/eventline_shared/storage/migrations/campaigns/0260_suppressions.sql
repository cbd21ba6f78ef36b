-- Suppression and provider reports (issue 15).
--
-- Numbered in a block of its own (026x) so that other changes of the ledger
-- (02xx) do not collide with it. Nothing here depends on the deliveries'
-- primary key: reports refer to a delivery by delivery_id, which is unique
-- whatever that key is.

-- Addresses that are sent nothing on a channel. An address suppressed because
-- of a customer's delivery goes with that customer's erasure (the address is
-- theirs); one added by hand (customer_id NULL) stays until removed.
CREATE TABLE suppressions (
    -- eventline.campaigns.v1.Channel numbers: 1 e-mail, 2 SMS.
    channel      smallint NOT NULL,
    -- E-mail addresses lower-cased; phone numbers as stored.
    address      text NOT NULL,
    -- eventline.campaigns.v1.SuppressionReason numbers.
    reason       smallint NOT NULL,
    detail       text NOT NULL DEFAULT '',
    delivery_id  bigint,
    customer_id  text REFERENCES customers ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, address)
);

CREATE INDEX suppressions_by_creation ON suppressions (created_at DESC, channel, address);
CREATE INDEX suppressions_by_customer ON suppressions (customer_id) WHERE customer_id IS NOT NULL;

-- What providers reported about sent messages, per delivery. customer_id
-- makes a customer's erasure remove their reports by cascade.
CREATE TABLE delivery_events (
    delivery_id        bigint NOT NULL,
    customer_id        text NOT NULL REFERENCES customers ON DELETE CASCADE,
    channel            smallint NOT NULL,
    -- The address the report is about (the provider's recipient, else the
    -- customer's address on the channel when it was recorded).
    address            text NOT NULL,
    -- eventline.campaigns.v1.DeliveryEventKind numbers; -3 is a soft bounce
    -- that no longer counts towards suppression (the suppression was lifted).
    kind               smallint NOT NULL,
    occurred_at        timestamptz NOT NULL,
    detail             text NOT NULL DEFAULT '',
    -- The provider's id of the report: a repeated one is recorded once.
    provider_event_id  text,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX delivery_events_by_delivery ON delivery_events (delivery_id, occurred_at);
CREATE UNIQUE INDEX delivery_events_once ON delivery_events (provider_event_id)
    WHERE provider_event_id IS NOT NULL;
CREATE INDEX delivery_events_soft_bounces ON delivery_events (channel, address, occurred_at) WHERE kind = 3;

-- Signed HTTP requests already handled (provider callbacks, unsubscribe
-- posts): the same signature again within its expiry is a replay. Shared by
-- every gateway replica; expired rows are removed as new ones arrive.
CREATE TABLE seen_requests (
    request_key  text PRIMARY KEY,
    expires_at   timestamptz NOT NULL
);

CREATE INDEX seen_requests_expiry ON seen_requests (expires_at);

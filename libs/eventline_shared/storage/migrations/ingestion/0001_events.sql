-- Customers, their events, system events and the outbox that feeds the stream.
--
-- Scale-out: every customer-owned table has customer_id as the first column
-- of its primary key, as the Citus distribution column would be, and refers
-- to customers with ON DELETE CASCADE so that erasing a customer erases every
-- row derived from them, including tables added by later migrations.

CREATE TABLE customers (
    customer_id   text PRIMARY KEY,
    email         text NOT NULL DEFAULT '',
    phone         text NOT NULL DEFAULT '',
    push_tokens   text[] NOT NULL DEFAULT '{}',
    attributes    jsonb NOT NULL DEFAULT '{}',
    -- eventline.common.v1.Consent numbers: 0 unspecified, 1 granted, 2 denied.
    email_consent smallint NOT NULL DEFAULT 0,
    sms_consent   smallint NOT NULL DEFAULT 0,
    push_consent  smallint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX customers_attributes ON customers USING gin (attributes jsonb_path_ops);

-- Immutable: no statement of Eventline updates a row of this table.
CREATE TABLE customer_events (
    customer_id text NOT NULL REFERENCES customers ON DELETE CASCADE,
    -- The client-chosen idempotency id; the primary key makes the dedupe
    -- window unbounded.
    event_id    text NOT NULL,
    name        text NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    -- Typed values in the storage form documented in eventline_shared.values.
    context     jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (customer_id, event_id)
);

-- "Who did X in period Y": an index-only scan by name and time gives customers.
CREATE INDEX customer_events_by_name
    ON customer_events (name, occurred_at, customer_id);
-- The timeline and "what did this customer do": newest first.
CREATE INDEX customer_events_by_customer
    ON customer_events (customer_id, occurred_at DESC, event_id DESC);
-- Context predicates: context @> '{"item_id": 42}'.
CREATE INDEX customer_events_context
    ON customer_events USING gin (context jsonb_path_ops);

-- One row per (customer, event name), maintained in the transaction that
-- stores the events: first and last occurrence and how many there are.
CREATE TABLE customer_event_stats (
    customer_id text NOT NULL REFERENCES customers ON DELETE CASCADE,
    name        text NOT NULL,
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    count       bigint NOT NULL,
    PRIMARY KEY (customer_id, name)
);

CREATE INDEX customer_event_stats_by_name
    ON customer_event_stats (name, last_at, customer_id);

CREATE TABLE system_events (
    event_id    text PRIMARY KEY,
    name        text NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    context     jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX system_events_by_name ON system_events (name, occurred_at);

-- Transactional outbox: one row per storing transaction, holding the stream
-- entries of the events it stored, packed (eventline_shared.stream.pack_entry).
-- The relay publishes a row to the Redis stream and deletes it in one
-- transaction, so every committed event reaches the stream at least once.
-- customer_ids lists the owners of the entries ('' for a system event), so
-- that erasure can find and scrub them.
CREATE TABLE event_outbox (
    id           bigserial PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    customer_ids text[] NOT NULL,
    entries      bytea NOT NULL
);

-- Entries are protobuf and ids: compressing them costs CPU and saves little.
ALTER TABLE event_outbox ALTER COLUMN entries SET STORAGE EXTERNAL;


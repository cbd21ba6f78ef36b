-- Segmentation: saved segments, and the customer order of ListCustomers /
-- StreamCustomers.

-- Saved segments (named filters). Not customer-owned.
CREATE TABLE segments (
    segment_id   text PRIMARY KEY,
    display_name text NOT NULL,
    description  text NOT NULL DEFAULT '',
    -- The serialized eventline.segmentation.v1.Filter (binary protobuf, so
    -- that fields added to the language later keep old segments readable).
    filter       bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Matching customers are listed and streamed in byte order of their ids,
-- whatever the database's collation; keyset pages walk this index.
CREATE INDEX customers_id_bytes ON customers (customer_id COLLATE "C");

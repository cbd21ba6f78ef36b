"""The schema can be sharded by customer (Citus) as it stands, read from the live catalog.

A sharded PostgreSQL distributes each customer-owned table by ``customer_id`` and
replicates the small shared tables to every node (reference tables). It can then
enforce only keys that contain the distribution column, and foreign keys between
distributed tables only when both sides name it. These tests read ``pg_catalog``
of a migrated database, so a migration that breaks this fails here, and they hold
docs/scaling.md's list of tables to the schema.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION_COLUMN = "customer_id"

_TABLES = """
SELECT c.oid, c.relname,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'schema_migrations'
GROUP BY c.oid, c.relname
"""

_UNIQUE_INDEXES = """
SELECT i.indrelid AS table_oid, ic.relname AS index_name,
       array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indisunique
GROUP BY i.indrelid, ic.relname
"""

_FOREIGN_KEYS = """
SELECT con.conname, con.conrelid AS table_oid, con.confrelid AS referenced_oid,
       array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o) AS columns,
       array(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) AS referenced
FROM pg_constraint con
WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace
"""


async def _schema(db: asyncpg.Connection) -> tuple[dict[int, tuple[str, list[str]]], list[str], list[str]]:
    """The tables (oid → name, columns), and the keys that a sharded schema could not enforce."""
    tables = {r["oid"]: (r["relname"], list(r["columns"])) for r in await db.fetch(_TABLES)}

    def owned(oid: int) -> bool:
        return DISTRIBUTION_COLUMN in tables[oid][1]

    bad_keys = [
        f"{tables[r['table_oid']][0]}: unique index {r['index_name']} ({', '.join(c or 'expression' for c in r['columns'])})"
        for r in await db.fetch(_UNIQUE_INDEXES)
        if r["table_oid"] in tables and owned(r["table_oid"]) and DISTRIBUTION_COLUMN not in r["columns"]
    ]
    bad_references = []
    for r in await db.fetch(_FOREIGN_KEYS):
        table, referenced = r["table_oid"], r["referenced_oid"]
        name = f"{tables[table][0]}: foreign key {r['conname']} to {tables[referenced][0]}"
        if owned(referenced) and not owned(table):
            # A reference table (on every node) cannot point at one shard's rows.
            bad_references.append(f"{name} (a shared table refers to a customer-owned one)")
        elif owned(referenced) and (
            DISTRIBUTION_COLUMN not in r["columns"]
            or r["referenced"][r["columns"].index(DISTRIBUTION_COLUMN)] != DISTRIBUTION_COLUMN
        ):
            bad_references.append(f"{name} (does not join on {DISTRIBUTION_COLUMN})")
        # A customer-owned table referring to a shared one (campaigns, say) is fine: the shared
        # table is a reference table, present on every node.
    return tables, bad_keys, bad_references


async def test_every_key_of_a_customer_owned_table_contains_customer_id(db: asyncpg.Connection) -> None:
    tables, bad_keys, bad_references = await _schema(db)
    owned = sorted(name for name, columns in tables.values() if DISTRIBUTION_COLUMN in columns)
    # The check has something to check: the customer-owned tables, with their keys and references.
    assert {"customers", "customer_events", "deliveries", "campaign_sends"} <= set(owned)
    assert bad_keys == []
    assert bad_references == []


async def test_the_check_catches_a_key_without_customer_id(db: asyncpg.Connection) -> None:
    """What the schema had before migration 0220: a unique delivery id without its customer."""
    await db.execute("ALTER TABLE deliveries ADD CONSTRAINT deliveries_delivery_id_key UNIQUE (delivery_id)")
    await db.execute(
        "CREATE TABLE customer_notes (customer_id text NOT NULL, note_id bigint PRIMARY KEY, "
        "delivery_id bigint, FOREIGN KEY (customer_id, delivery_id) REFERENCES deliveries (customer_id, delivery_id))"
    )
    await db.execute(
        "CREATE TABLE shared_notes (note_id bigint PRIMARY KEY, customer_id_ref text REFERENCES customers)"
    )
    await db.execute(
        "CREATE TABLE loose_notes (customer_id text NOT NULL, delivery_id bigint REFERENCES deliveries (delivery_id))"
    )
    _, bad_keys, bad_references = await _schema(db)
    assert sorted(bad_keys) == [
        "customer_notes: unique index customer_notes_pkey (note_id)",
        "deliveries: unique index deliveries_delivery_id_key (delivery_id)",
    ]
    assert sorted(bad_references) == [
        "loose_notes: foreign key loose_notes_delivery_id_fkey to deliveries (does not join on customer_id)",
        "shared_notes: foreign key shared_notes_customer_id_ref_fkey to customers "
        "(a shared table refers to a customer-owned one)",
    ]


async def test_docs_scaling_places_every_table(db: asyncpg.Connection) -> None:
    """docs/scaling.md names every table: distributed by customer_id exactly when it is customer-owned."""
    tables, _, _ = await _schema(db)
    text = (ROOT / "docs" / "scaling.md").read_text()
    placed = dict(
        re.findall(r"^\| `(\w+)` \| (distributed|reference|coordinator-local)\b", text, re.MULTILINE)
    )
    assert sorted(placed) == sorted(name for name, _ in tables.values())
    for name, columns in tables.values():
        assert (placed[name] == "distributed") == (DISTRIBUTION_COLUMN in columns), name

"""The named-context index's expression (migration 0150): inlined, the same values, still used.

Real PostgreSQL: a database migrated by the real runner (the ``db`` fixture's template).
"""

from __future__ import annotations

import asyncpg

from eventline_shared.storage import database

# 0101's body, as a database before 0150 holds it.
_BEFORE_0150 = """
CREATE OR REPLACE FUNCTION eventline_named_context(name text, context jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT jsonb_build_object(name, context) $$
"""

# The segmentation compiler's form of an equality on a named event's context.
_READER = (
    "EXPLAIN SELECT count(*) FROM customer_events e "
    'WHERE eventline_named_context(e.name, e.context) @> \'{"E05": {"item_id": 5}}\''
)


async def _plan(connection: asyncpg.Connection) -> str:
    await connection.execute("SET enable_seqscan = off")
    return "\n".join(row[0] for row in await connection.fetch(_READER))


async def test_the_index_expression_is_inlined_and_builds_what_jsonb_build_object_built(
    db: asyncpg.Connection,
) -> None:
    """No SQL function runs per stored event (the planner inlines the body), and the value is
    byte for byte 0101's for names and contexts of every shape the index may hold."""
    expression = await db.fetchval(
        "SELECT pg_get_expr(i.indexprs, i.indrelid) FROM pg_index i "
        "WHERE i.indexrelid = 'customer_events_named_context'::regclass"
    )
    assert "eventline_named_context" in expression  # what the catalog keeps: the call
    plan = await _plan(db)
    assert "customer_events_named_context" in plan, plan
    assert "jsonb_set" in plan and "eventline_named_context" not in plan, plan  # inlined
    differing = await db.fetchval(
        """
        SELECT count(*) FROM (VALUES
            ('E05', '{"item_id": 5, "amount": 12.34}'::jsonb),
            ('a"b\\c', '{"x": [1, {"y": null}], "": {}}'), ('', 'null'), ('é', '"s"'), ('n', '[]')
        ) AS t(name, context)
        WHERE eventline_named_context(name, context) IS DISTINCT FROM jsonb_build_object(name, context)
        """
    )
    assert differing == 0


async def test_a_session_that_loaded_the_old_expression_still_finds_the_index_after_0150(
    db: asyncpg.Connection, db_url: str
) -> None:
    """A replica's session that cached the index before the migration (the expression not
    inlined) would no longer match the readers' inlined form; 0150 invalidates its cache."""
    await db.execute(_BEFORE_0150)
    running = await asyncpg.connect(db_url)
    try:
        assert "customer_events_named_context" in await _plan(running)  # loaded, old form
        sql = next(text for version, _, text in database.migrations() if version == 150)
        await db.execute(sql)
        plan = await _plan(running)
        assert "customer_events_named_context" in plan, plan
        assert "jsonb_set" in plan, plan
    finally:
        await running.close()

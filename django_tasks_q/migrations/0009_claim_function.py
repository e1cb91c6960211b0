"""PostgreSQL: the django:// claim as a function that is planned as an index scan whatever the statistics say.

Without statistics (a table not yet analyzed, or analyzed before a large
fill or release), the planner guesses that a handful of rows are ready and
reads them all through a bitmap scan and a sort: a claim of 16 then costs a
sort of every ready row (11 ms with 20,000 ready, growing with the queue).
With sorting disabled for this one statement (the function's ``SET``
clause), the only plan left reads the ready index in order and stops after
``claim_size`` rows.

The claimed ids are collected into an array (``id = ANY(ARRAY(...))``), not
joined with ``IN (SELECT ...)``: inside a function ``claim_size`` is a
parameter, the planner then guesses that the subquery returns a tenth of the
table, and joins it to a sequential scan of the whole table -- every claim
reading every row. An array is looked up through the primary key.
Other databases are left alone.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION django_tasks_q_claim(
    claim_queue text, claim_now timestamptz, claim_deadline timestamptz, claim_size integer)
RETURNS TABLE (id bigint, priority integer, payload text, delivery_count integer, delivery_tag text)
LANGUAGE sql
SET enable_sort = off
AS $$
    UPDATE django_tasks_q_brokermessage AS claimed
    SET reserved_until = claim_deadline, delivery_count = claimed.delivery_count + 1
    WHERE claimed.id = ANY(ARRAY(
        SELECT ready.id FROM django_tasks_q_brokermessage AS ready
        WHERE ready.queue = claim_queue AND ready.visible_at IS NULL
          AND (ready.reserved_until IS NULL OR ready.reserved_until < claim_now)
        ORDER BY ready.priority DESC, ready.id
        LIMIT claim_size
        FOR UPDATE SKIP LOCKED))
    RETURNING claimed.id, claimed.priority::integer, claimed.payload, claimed.delivery_count - 1,
              claimed.delivery_tag::text
$$
"""
DROP = "DROP FUNCTION IF EXISTS django_tasks_q_claim(text, timestamptz, timestamptz, integer)"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):

    dependencies = [
        ("django_tasks_q", "0008_activity"),
    ]

    operations = [
        migrations.RunPython(create, drop, elidable=False),
    ]

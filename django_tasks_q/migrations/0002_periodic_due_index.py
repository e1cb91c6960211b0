"""The periodic tasks' due-time index: ``next_run_at``, and the triggers that empty it when a task changes.

Beat reads only the tasks that are due (``next_run_at`` at or before now) and those it has not planned
(``next_run_at`` empty), through the ``(enabled, next_run_at)`` index. An edit must empty ``next_run_at``
however it is made -- the admin, ``QuerySet.update()``, raw SQL -- so the database does it: on SQLite and
PostgreSQL, a trigger empties a task's ``next_run_at`` when its schedule, ``start_time``, ``expires``,
``enabled``, ``one_off`` or ``last_run_at`` changes (or ``plan_version`` is written: an old copy of the row)
and counts the change in ``plan_version``, on from its old value; a trigger on
each schedule table does the same for every task using a changed schedule row; and a new row (a copy, a
fixture) starts unplanned whatever ``next_run_at`` it carried. The scheduler stores a plan only where
``plan_version`` is still what it read, so an edit made during a check is never overwritten. On other
databases there are no triggers, and beat reads every task on every check, as before this migration.

SQLite rebuilds a table for most schema changes, and a rebuild breaks or drops these triggers: a later
migration that alters ``PeriodicTask`` or a schedule model runs ``drop_triggers`` before and
``create_triggers`` after its operations.
"""

from django.db import migrations, models

#: the columns whose change means "plan this task again"
WATCHED = ("interval_id", "crontab_id", "clocked_id", "solar_id", "start_time", "expires", "enabled", "one_off",
           "last_run_at")
SCHEDULES = (("intervalschedule", "interval_id"), ("crontabschedule", "crontab_id"),
             ("clockedschedule", "clocked_id"), ("solarschedule", "solar_id"))
TASKS = "django_tasks_q_periodictask"


def _sqlite() -> tuple[list[str], list[str]]:
    changed = " OR ".join(f"NEW.{column} IS NOT OLD.{column}" for column in WATCHED)
    replan = "SET next_run_at = NULL, plan_version = plan_version + 1"
    # a write of plan_version itself (an old copy of the row) counts as a change, and counts on from the old value
    create = [f"""CREATE TRIGGER tasks_q_periodic_replan AFTER UPDATE ON {TASKS} FOR EACH ROW
                  WHEN ({changed}) OR NEW.plan_version IS NOT OLD.plan_version
                  BEGIN UPDATE {TASKS} SET next_run_at = NULL, plan_version = OLD.plan_version + 1
                        WHERE id = NEW.id; END""",
              f"""CREATE TRIGGER tasks_q_periodic_insert AFTER INSERT ON {TASKS} FOR EACH ROW
                  WHEN NEW.next_run_at IS NOT NULL
                  BEGIN UPDATE {TASKS} SET next_run_at = NULL WHERE id = NEW.id; END"""]
    drop = ["DROP TRIGGER IF EXISTS tasks_q_periodic_replan", "DROP TRIGGER IF EXISTS tasks_q_periodic_insert"]
    for table, column in SCHEDULES:
        create.append(f"""CREATE TRIGGER tasks_q_{table}_replan AFTER UPDATE ON django_tasks_q_{table} FOR EACH ROW
                          BEGIN UPDATE {TASKS} {replan} WHERE {column} = NEW.id; END""")
        drop.append(f"DROP TRIGGER IF EXISTS tasks_q_{table}_replan")
    return create, drop


def _postgresql() -> tuple[list[str], list[str]]:
    changed = " OR ".join(f"NEW.{column} IS DISTINCT FROM OLD.{column}" for column in WATCHED)
    # one trigger function for the four schedule tables: its argument names the task column to match
    branches = " ELSIF ".join(f"TG_ARGV[0] = '{column}' THEN UPDATE {TASKS} SET next_run_at = NULL, "
                              f"plan_version = plan_version + 1 WHERE {column} = NEW.id;" for _, column in SCHEDULES)
    create = [f"""CREATE FUNCTION tasks_q_periodic_replan() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                    IF TG_OP = 'INSERT' THEN
                      NEW.next_run_at := NULL;
                    ELSIF ({changed}) OR NEW.plan_version IS DISTINCT FROM OLD.plan_version THEN
                      NEW.next_run_at := NULL;
                      NEW.plan_version := OLD.plan_version + 1;
                    END IF;
                    RETURN NEW;
                  END $$""",
              f"""CREATE TRIGGER tasks_q_periodic_replan BEFORE INSERT OR UPDATE ON {TASKS}
                  FOR EACH ROW EXECUTE FUNCTION tasks_q_periodic_replan()""",
              f"""CREATE FUNCTION tasks_q_schedule_replan() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN
                    IF {branches}
                    END IF;
                    RETURN NULL;
                  END $$"""]
    drop = [f"DROP TRIGGER IF EXISTS tasks_q_periodic_replan ON {TASKS}"]
    for table, column in SCHEDULES:
        create.append(f"""CREATE TRIGGER tasks_q_{table}_replan AFTER UPDATE ON django_tasks_q_{table}
                          FOR EACH ROW EXECUTE FUNCTION tasks_q_schedule_replan('{column}')""")
        drop.append(f"DROP TRIGGER IF EXISTS tasks_q_{table}_replan ON django_tasks_q_{table}")
    drop += ["DROP FUNCTION IF EXISTS tasks_q_periodic_replan()", "DROP FUNCTION IF EXISTS tasks_q_schedule_replan()"]
    return create, drop


STATEMENTS = {"sqlite": _sqlite, "postgresql": _postgresql}


def create_triggers(apps, schema_editor):
    statements = STATEMENTS.get(schema_editor.connection.vendor)
    for statement in statements()[0] if statements else ():
        schema_editor.execute(statement)


def drop_triggers(apps, schema_editor):
    statements = STATEMENTS.get(schema_editor.connection.vendor)
    for statement in statements()[1] if statements else ():
        schema_editor.execute(statement)


class Migration(migrations.Migration):

    dependencies = [
        ("django_tasks_q", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="periodictask",
            name="next_run_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddIndex(
            model_name="periodictask",
            index=models.Index(fields=["enabled", "next_run_at"], name="tasks_q_periodic_due"),
        ),
        migrations.AddField(
            model_name="periodictask",
            name="plan_version",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.RunPython(create_triggers, drop_triggers, elidable=False),
    ]

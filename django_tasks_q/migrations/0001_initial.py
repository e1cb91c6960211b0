"""The whole schema of django-tasks-q, squashed before the first release (no site has applied an earlier one).

After the tables, on PostgreSQL only: the django:// claim as a SQL function that is planned as an index
scan whatever the statistics say. Without statistics (a table not yet analyzed, or analyzed before a large
fill or release), the planner guesses that a handful of rows are ready and reads them all through a bitmap
scan and a sort: a claim of 16 then costs a sort of every ready row (11 ms with 20,000 ready, growing with
the queue). With sorting disabled for this one statement (the function's ``SET`` clause), the only plan left
reads the ready index in order and stops after ``claim_size`` rows.

The claimed ids are collected into an array (``id = ANY(ARRAY(...))``), not joined with ``IN (SELECT ...)``:
inside a function ``claim_size`` is a parameter, the planner then guesses that the subquery returns a tenth
of the table, and joins it to a sequential scan of the whole table -- every claim reading every row. An
array is looked up through the primary key. Other databases are left alone.
"""

import django.core.serializers.json
import django.db.models.deletion
from django.db import migrations, models

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


def create_claim_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop_claim_function(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='BeatLease',
            fields=[
                ('name', models.CharField(max_length=64, primary_key=True, serialize=False)),
                ('holder', models.CharField(blank=True, max_length=255)),
                ('expires_at', models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.CreateModel(
            name='ChordCounter',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('group_id', models.CharField(max_length=255, unique=True, verbose_name='group id')),
                ('total', models.PositiveIntegerField()),
                ('done', models.PositiveIntegerField(default=0)),
                ('failed', models.BooleanField(default=False)),
                ('result_ids', models.JSONField(blank=True, default=list, help_text='member task ids in header order')),
                ('body', models.JSONField(encoder=django.core.serializers.json.DjangoJSONEncoder, help_text='the body signature as a dict')),
                ('date_created', models.DateTimeField(auto_now_add=True, db_index=True)),
            ],
            options={
                'verbose_name': 'chord counter',
            },
        ),
        migrations.CreateModel(
            name='ClockedSchedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('clocked_time', models.DateTimeField(help_text='run once at this time')),
            ],
            options={
                'ordering': ['clocked_time'],
            },
        ),
        migrations.CreateModel(
            name='CrontabSchedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('minute', models.CharField(default='*', max_length=240)),
                ('hour', models.CharField(default='*', max_length=96)),
                ('day_of_week', models.CharField(default='*', help_text='0-6, 0 is Sunday; or mon-fri', max_length=64)),
                ('day_of_month', models.CharField(default='*', max_length=124)),
                ('month_of_year', models.CharField(default='*', max_length=64)),
                ('timezone', models.CharField(default='UTC', help_text='IANA name such as Asia/Shanghai', max_length=63)),
            ],
            options={
                'ordering': ['month_of_year', 'day_of_month', 'day_of_week', 'hour', 'minute', 'timezone'],
            },
        ),
        migrations.CreateModel(
            name='GroupResultMeta',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('group_id', models.CharField(max_length=255, unique=True, verbose_name='group id')),
                ('result_ids', models.JSONField(blank=True, default=list)),
                ('date_done', models.DateTimeField(auto_now_add=True, db_index=True)),
            ],
            options={
                'verbose_name': 'group result',
            },
        ),
        migrations.CreateModel(
            name='RateLimitBucket',
            fields=[
                ('key', models.CharField(help_text='the task name', max_length=255, primary_key=True, serialize=False)),
                ('next_slot_at', models.FloatField(default=0.0, help_text='epoch seconds')),
            ],
            options={
                'verbose_name': 'rate-limit bucket',
            },
        ),
        migrations.CreateModel(
            name='Revocation',
            fields=[
                ('task_id', models.CharField(max_length=255, primary_key=True, serialize=False, verbose_name='task id')),
                ('terminate', models.BooleanField(default=False, help_text='also stop the task if it is running')),
                ('signal', models.CharField(default='SIGTERM', help_text='signal a prefork child is stopped with', max_length=20)),
                ('reason', models.CharField(blank=True, max_length=255)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('expires_at', models.DateTimeField(db_index=True, help_text='the row is pruned after this time')),
            ],
            options={
                'verbose_name': 'revocation',
            },
        ),
        migrations.CreateModel(
            name='TaskEvent',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('event', models.CharField(max_length=40, verbose_name='event type')),
                ('task_id', models.CharField(blank=True, db_index=True, max_length=255, verbose_name='task id')),
                ('task_name', models.CharField(blank=True, max_length=255, verbose_name='task name')),
                ('hostname', models.CharField(blank=True, max_length=255)),
                ('timestamp', models.DateTimeField(db_index=True, help_text='when the worker made the event')),
                ('state', models.CharField(blank=True, max_length=20)),
                ('runtime', models.FloatField(blank=True, help_text='seconds the task ran (task-succeeded)', null=True)),
                ('exception', models.TextField(blank=True)),
                ('traceback', models.TextField(blank=True)),
                ('data', models.JSONField(default=dict, encoder=django.core.serializers.json.DjangoJSONEncoder, help_text='the whole event')),
            ],
            options={
                'verbose_name': 'task event',
                'ordering': ['-timestamp', '-id'],
            },
        ),
        migrations.CreateModel(
            name='Worker',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('hostname', models.CharField(max_length=255, unique=True)),
                ('pid', models.PositiveIntegerField(blank=True, null=True)),
                ('queues', models.JSONField(blank=True, default=list)),
                ('pool', models.CharField(blank=True, max_length=20)),
                ('concurrency', models.PositiveIntegerField(default=1)),
                ('version', models.CharField(blank=True, max_length=40)),
                ('broker', models.CharField(blank=True, help_text='the broker URL, password masked', max_length=255)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('last_heartbeat', models.DateTimeField(blank=True, db_index=True, null=True)),
                ('heartbeat_interval', models.FloatField(default=5.0, help_text='seconds between heartbeats')),
                ('last_progress_at', models.DateTimeField(blank=True, help_text='last message received or finished', null=True)),
                ('stopped_at', models.DateTimeField(blank=True, help_text='set on a clean shutdown', null=True)),
                ('processed', models.PositiveBigIntegerField(default=0)),
                ('failed', models.PositiveBigIntegerField(default=0)),
                ('active', models.PositiveIntegerField(default=0, help_text='tasks running at the last heartbeat')),
                ('load', models.JSONField(blank=True, default=list, help_text='1, 5 and 15 minute load averages of the host')),
                ('problem', models.TextField(blank=True, help_text='what the watchdog found wrong, if anything')),
            ],
            options={
                'verbose_name': 'worker',
                'ordering': ['hostname'],
            },
        ),
        migrations.CreateModel(
            name='BrokerBinding',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('exchange', models.CharField(max_length=200)),
                ('exchange_type', models.CharField(choices=[('direct', 'Direct'), ('topic', 'Topic'), ('fanout', 'Fanout')], max_length=10)),
                ('routing_key', models.CharField(blank=True, help_text='the binding key; topic: words with * (one) and # (zero or more)', max_length=255)),
                ('queue', models.CharField(max_length=200)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'verbose_name': 'broker binding',
                'db_table': 'django_tasks_q_brokerbinding',
                'indexes': [models.Index(fields=['queue'], name='tasks_q_binding_queue')],
                'constraints': [models.UniqueConstraint(fields=('exchange', 'routing_key', 'queue'), name='tasks_q_binding_unique')],
            },
        ),
        migrations.CreateModel(
            name='BrokerMessage',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('queue', models.CharField(max_length=200)),
                ('payload', models.TextField(help_text='the kombu message, JSON-encoded by the channel')),
                ('priority', models.PositiveSmallIntegerField(default=0, help_text='higher is delivered first (AMQP)')),
                ('delivery_tag', models.CharField(db_index=True, max_length=64)),
                ('visible_at', models.DateTimeField(blank=True, help_text='parked (delayed delivery) until this time; null: deliverable', null=True)),
                ('reserved_until', models.DateTimeField(blank=True, help_text='deadline of the current claim; null while waiting', null=True)),
                ('delivery_count', models.PositiveIntegerField(default=0, help_text='how many times a consumer claimed it; above 0 means redelivered')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'verbose_name': 'broker message',
                'db_table': 'django_tasks_q_brokermessage',
                'indexes': [models.Index(condition=models.Q(('visible_at__isnull', True)), fields=['queue', '-priority', 'id'], name='tasks_q_message_ready'), models.Index(condition=models.Q(('visible_at__isnull', False)), fields=['visible_at'], name='tasks_q_message_parked'), models.Index(fields=['queue', 'reserved_until'], name='tasks_q_message_reserved')],
            },
        ),
        migrations.CreateModel(
            name='IntervalSchedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('every', models.PositiveIntegerField(help_text='how many periods between runs')),
                ('period', models.CharField(choices=[('days', 'Days'), ('hours', 'Hours'), ('minutes', 'Minutes'), ('seconds', 'Seconds')], max_length=24)),
            ],
            options={
                'ordering': ['period', 'every'],
                'constraints': [models.UniqueConstraint(fields=('every', 'period'), name='tasks_q_interval_unique'), models.CheckConstraint(condition=models.Q(('every__gte', 1)), name='tasks_q_interval_every_positive')],
            },
        ),
        migrations.CreateModel(
            name='Queue',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text='what workers consume: taskworker -Q NAME', max_length=200, unique=True)),
                ('exchange', models.CharField(blank=True, help_text='empty: an exchange named like the queue', max_length=200)),
                ('exchange_type', models.CharField(choices=[('direct', 'Direct'), ('topic', 'Topic'), ('fanout', 'Fanout')], default='direct', max_length=10)),
                ('routing_key', models.CharField(blank=True, help_text="binding key; empty: the queue's name. Topic: media.* or media.#", max_length=200)),
                ('max_priority', models.PositiveSmallIntegerField(blank=True, help_text='enable priorities 0..N (RabbitMQ x-max-priority)', null=True)),
                ('durable', models.BooleanField(default=True)),
                ('description', models.TextField(blank=True)),
            ],
            options={
                'ordering': ['name'],
                'constraints': [models.CheckConstraint(condition=models.Q(('max_priority__isnull', True), models.Q(('max_priority__gte', 1), ('max_priority__lte', 255)), _connector='OR'), name='tasks_q_queue_max_priority')],
            },
        ),
        migrations.CreateModel(
            name='SolarSchedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('event', models.CharField(choices=[('sunrise', 'Sunrise'), ('sunset', 'Sunset'), ('solar_noon', 'Solar Noon'), ('dawn_civil', 'Dawn Civil'), ('dusk_civil', 'Dusk Civil'), ('dawn_nautical', 'Dawn Nautical'), ('dusk_nautical', 'Dusk Nautical'), ('dawn_astronomical', 'Dawn Astronomical'), ('dusk_astronomical', 'Dusk Astronomical')], max_length=24)),
                ('latitude', models.DecimalField(decimal_places=6, max_digits=9)),
                ('longitude', models.DecimalField(decimal_places=6, max_digits=9)),
            ],
            options={
                'ordering': ['event', 'latitude', 'longitude'],
                'constraints': [models.UniqueConstraint(fields=('event', 'latitude', 'longitude'), name='tasks_q_solar_unique'), models.CheckConstraint(condition=models.Q(('latitude__gte', -90), ('latitude__lte', 90)), name='tasks_q_solar_latitude'), models.CheckConstraint(condition=models.Q(('longitude__gte', -180), ('longitude__lte', 180)), name='tasks_q_solar_longitude')],
            },
        ),
        migrations.CreateModel(
            name='TaskActivity',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('minute', models.DateTimeField(help_text='start of the minute')),
                ('task_name', models.CharField(blank=True, max_length=255, verbose_name='task name')),
                ('received', models.PositiveIntegerField(default=0)),
                ('started', models.PositiveIntegerField(default=0)),
                ('succeeded', models.PositiveIntegerField(default=0)),
                ('failed', models.PositiveIntegerField(default=0)),
                ('retried', models.PositiveIntegerField(default=0)),
                ('rejected', models.PositiveIntegerField(default=0)),
                ('revoked', models.PositiveIntegerField(default=0)),
                ('runtime_total', models.FloatField(default=0.0, help_text='seconds, summed over the succeeded tasks')),
                ('runtime_max', models.FloatField(default=0.0, help_text='seconds, the longest succeeded task')),
            ],
            options={
                'verbose_name': 'task activity',
                'verbose_name_plural': 'task activity',
                'ordering': ['-minute', 'task_name'],
                'constraints': [models.UniqueConstraint(fields=('minute', 'task_name'), name='tasks_q_activity_unique')],
            },
        ),
        migrations.CreateModel(
            name='TaskResult',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('task_id', models.CharField(max_length=255, unique=True, verbose_name='task id')),
                ('task_name', models.CharField(blank=True, db_index=True, max_length=255, verbose_name='task name')),
                ('state', models.CharField(choices=[('PENDING', 'Pending'), ('RECEIVED', 'Received'), ('STARTED', 'Started'), ('RETRY', 'Retry'), ('SUCCESS', 'Success'), ('FAILURE', 'Failure'), ('REVOKED', 'Revoked')], db_index=True, default='PENDING', max_length=50)),
                ('args', models.JSONField(blank=True, default=list, encoder=django.core.serializers.json.DjangoJSONEncoder)),
                ('kwargs', models.JSONField(blank=True, default=dict, encoder=django.core.serializers.json.DjangoJSONEncoder)),
                ('result', models.JSONField(blank=True, encoder=django.core.serializers.json.DjangoJSONEncoder, null=True)),
                ('traceback', models.TextField(blank=True)),
                ('worker', models.CharField(blank=True, db_index=True, max_length=255)),
                ('queue', models.CharField(blank=True, db_index=True, max_length=255)),
                ('retries', models.PositiveIntegerField(default=0)),
                ('parent_id', models.CharField(blank=True, max_length=255)),
                ('root_id', models.CharField(blank=True, max_length=255)),
                ('group_id', models.CharField(blank=True, db_index=True, max_length=255)),
                ('date_created', models.DateTimeField(auto_now_add=True)),
                ('date_received', models.DateTimeField(blank=True, null=True)),
                ('date_started', models.DateTimeField(blank=True, null=True)),
                ('date_done', models.DateTimeField(blank=True, db_index=True, null=True)),
                ('runtime', models.FloatField(blank=True, help_text='seconds the task ran', null=True)),
            ],
            options={
                'verbose_name': 'task result',
                'ordering': ['-date_created'],
                'indexes': [models.Index(fields=['state', 'date_done'], name='tasks_q_result_state_done')],
            },
        ),
        migrations.CreateModel(
            name='Dashboard',
            fields=[
            ],
            options={
                'verbose_name': 'dashboard',
                'verbose_name_plural': 'dashboard',
                'proxy': True,
                'default_permissions': (),
                'indexes': [],
                'constraints': [],
            },
            bases=('django_tasks_q.taskresult',),
        ),
        migrations.CreateModel(
            name='PeriodicTask',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=200, unique=True)),
                ('task', models.CharField(help_text='registered task name, e.g. videos.tasks.compress', max_length=200)),
                ('args', models.JSONField(blank=True, default=list, encoder=django.core.serializers.json.DjangoJSONEncoder, help_text='JSON list, e.g. [1, 2]')),
                ('kwargs', models.JSONField(blank=True, default=dict, encoder=django.core.serializers.json.DjangoJSONEncoder, help_text='JSON object, e.g. {"day": "monday"}')),
                ('queue', models.CharField(blank=True, help_text="empty: the task's own routing", max_length=200)),
                ('routing_key', models.CharField(blank=True, max_length=200)),
                ('priority', models.PositiveSmallIntegerField(blank=True, null=True)),
                ('expire_seconds', models.PositiveIntegerField(blank=True, help_text='each run expires this many seconds after it is sent', null=True)),
                ('expires', models.DateTimeField(blank=True, help_text='no runs are sent after this time', null=True)),
                ('one_off', models.BooleanField(default=False, help_text='disable after the first run')),
                ('start_time', models.DateTimeField(blank=True, help_text='no runs before this time', null=True)),
                ('enabled', models.BooleanField(default=True)),
                ('catch_up', models.CharField(choices=[('once', 'run once after downtime'), ('none', 'skip missed runs')], default='once', max_length=8)),
                ('source', models.CharField(choices=[('admin', 'Admin'), ('settings', "TASKS_Q['BEAT_SCHEDULE']")], default='admin', editable=False, max_length=16)),
                ('last_run_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('total_run_count', models.PositiveIntegerField(default=0, editable=False)),
                ('description', models.TextField(blank=True)),
                ('date_changed', models.DateTimeField(auto_now=True)),
                ('schedule_fingerprint', models.CharField(blank=True, editable=False, max_length=64)),
                ('baseline_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('clocked', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, to='django_tasks_q.clockedschedule')),
                ('crontab', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, to='django_tasks_q.crontabschedule')),
                ('interval', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, to='django_tasks_q.intervalschedule')),
                ('solar', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, to='django_tasks_q.solarschedule')),
            ],
            options={
                'ordering': ['name'],
                'constraints': [models.CheckConstraint(condition=models.Q(models.Q(('clocked__isnull', True), ('crontab__isnull', True), ('interval__isnull', False), ('solar__isnull', True)), models.Q(('clocked__isnull', True), ('crontab__isnull', False), ('interval__isnull', True), ('solar__isnull', True)), models.Q(('clocked__isnull', False), ('crontab__isnull', True), ('interval__isnull', True), ('solar__isnull', True)), models.Q(('clocked__isnull', True), ('crontab__isnull', True), ('interval__isnull', True), ('solar__isnull', False)), _connector='OR'), name='tasks_q_periodic_one_schedule'), models.CheckConstraint(condition=models.Q(('priority__isnull', True), ('priority__lte', 255), _connector='OR'), name='tasks_q_periodic_priority')],
            },
        ),
        migrations.CreateModel(
            name='TaskRoute',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('pattern', models.CharField(help_text='exact task name, or a glob such as videos.*', max_length=200)),
                ('routing_key', models.CharField(blank=True, help_text="empty: the queue's routing key", max_length=200)),
                ('priority', models.PositiveSmallIntegerField(blank=True, help_text='0-255, higher runs first', null=True)),
                ('order', models.PositiveIntegerField(default=0, help_text='rules are tried from the lowest order up')),
                ('enabled', models.BooleanField(default=True)),
                ('description', models.TextField(blank=True)),
                ('queue', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='routes', to='django_tasks_q.queue')),
            ],
            options={
                'ordering': ['order', 'id'],
                'constraints': [models.CheckConstraint(condition=models.Q(('priority__isnull', True), ('priority__lte', 255), _connector='OR'), name='tasks_q_route_priority')],
            },
        ),
        migrations.RunPython(create_claim_function, drop_claim_function, elidable=False),
    ]

-- pg_cron heals the fleet with nobody looking; scheduling is idempotent
-- (make test re-applies every migration before this file runs).
begin;
set local search_path to public, extensions;
select plan(4);

select is(
  (select count(*)::int from cron.job where jobname = 'device-assignment-maintenance'), 1,
  'the maintenance job is registered exactly once');
select is(
  (select count(*)::int from cron.job where jobname = 'device-assignment-purge'), 1,
  'the purge job is registered exactly once');
select is(
  (select schedule from cron.job where jobname = 'device-assignment-maintenance'),
  case when (select string_to_array(substring(extversion from '^[0-9.]+'), '.')::int[]
               from pg_extension where extname = 'pg_cron') >= array[1, 5]
       then '10 seconds' else '* * * * *' end,
  'maintenance runs as often as this pg_cron allows');
select is(
  (select command from cron.job where jobname = 'device-assignment-maintenance'),
  'select public.run_assignment_maintenance()', 'the job runs the maintenance pass');

select * from finish();
rollback;

-- pg_cron heals the fleet with nobody looking. (That applying the schedule
-- again duplicates no job is checked by make test's schemas gate.)
begin;
set local search_path to public, extensions;
select plan(6);

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

-- The purge keeps the run history of the project's other jobs.
select cron.schedule('someone-elses-job', '0 0 * * *', 'select 1');
insert into cron.job_run_details (jobid, runid, job_pid, database, username, command, status,
                                  return_message, start_time, end_time)
select j.jobid, 900000 + row_number() over (), 1, 'postgres', 'postgres', j.command, 'succeeded',
       '1 row', now() - interval '30 days', now() - interval '30 days'
from cron.job j
where j.jobname in ('someone-elses-job', 'device-assignment-maintenance');
select is((device_assignment.purge_history() ->> 'cron_runs_deleted')::int, 1,
  'the purge deletes old runs of our own jobs');
select is(
  (select count(*)::int from cron.job_run_details r join cron.job j using (jobid)
    where j.jobname = 'someone-elses-job'),
  1, 'and keeps the history of every other job');

select * from finish();
rollback;

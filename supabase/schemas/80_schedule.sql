-- pg_cron heals the fleet when no user is looking: maintenance every 10 seconds
-- where pg_cron >= 1.5 supports sub-minute schedules, else every minute, and a
-- daily purge of old audit rows and of pg_cron's run history.
--
-- cron.schedule() with a job name replaces that job, so applying this
-- file again never duplicates a job. pg_cron can only live in the database
-- named by cron.database_name (`postgres` on Supabase); elsewhere the schedule
-- is skipped with a notice, and run_assignment_maintenance() must be called by
-- another scheduler.
do $$
declare
  v_version integer[];
begin
  if not exists (select from pg_available_extensions where name = 'pg_cron')
     or current_database() <> coalesce(current_setting('cron.database_name', true), 'postgres') then
    raise notice 'pg_cron is not available in database %; healing schedule not installed',
      current_database();
    return;
  end if;

  create extension if not exists pg_cron with schema pg_catalog;
  -- extversion looks like '1.4-1' (Debian) or '1.6.4'.
  select string_to_array(substring(e.extversion from '^[0-9.]+'), '.')::integer[] into v_version
  from pg_extension e where e.extname = 'pg_cron';

  perform cron.schedule(
    'device-assignment-maintenance',
    case when v_version >= array[1, 5] then '10 seconds' else '* * * * *' end,
    'select public.run_assignment_maintenance()'
  );
  perform cron.schedule(
    'device-assignment-purge',
    '17 3 * * *',
    'select device_assignment.purge_history()'
  );
end
$$;

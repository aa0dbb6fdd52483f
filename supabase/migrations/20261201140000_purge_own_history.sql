-- The purge deletes pg_cron's run history of this bundle's own jobs only: the
-- history of a project's other jobs is theirs to keep. (Replaces the function
-- of 20261128190400_operator_api.sql.)
create or replace function device_assignment.purge_history()
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_events integer;
  v_runs integer := 0;
begin
  delete from public.device_assignment_events e
   using public.assignment_settings cfg
   where e.created_at < now() - cfg.event_retention;
  get diagnostics v_events = row_count;

  -- Dynamic because pg_cron may be missing (a database other than cron.database_name).
  if to_regclass('cron.job_run_details') is not null then
    execute $sql$
      delete from cron.job_run_details r
       where r.end_time < now() - interval '7 days'
         and r.jobid in (select j.jobid from cron.job j
                          where j.jobname in ('device-assignment-maintenance',
                                              'device-assignment-purge'))
    $sql$;
    get diagnostics v_runs = row_count;
  end if;

  return jsonb_build_object('events_deleted', v_events, 'cron_runs_deleted', v_runs);
end;
$$;

-- Second review of least privilege (issue 13), tried as an attacker holding
-- the secret key: two ways it could still erase or break the audit trail,
-- which 20261201150000_least_privilege.sql makes append-only for every role.
--
--   * event_retention had no lower bound. service_role may update
--     assignment_settings (the Data API's table endpoint, with the secret key),
--     and the daily purge, which runs as the table's owner and is the one path
--     by which rows leave, deletes everything older than event_retention: set
--     to a second (or a negative interval), the next purge erased the whole
--     trail. A floor of seven days keeps the last week out of reach, long
--     enough for whoever is on call to notice and read what happened.
--   * service_role held USAGE and UPDATE on the trail's identity sequence, so
--     (in a SQL session as service_role) setval could rewind it, and every
--     later audit insert, hence every device move, would fail on a duplicate
--     key. Only the one writer (move_devices, run by security definer
--     functions as the owner) numbers rows; no API role needs the sequence.

-- Retention floor -----------------------------------------------------------------------
-- A database that had a shorter retention is brought to the floor (and says
-- so): keeping rows longer loses nothing.
do $$
begin
  if exists (select from public.assignment_settings cfg where cfg.event_retention < interval '7 days') then
    raise notice 'assignment_settings.event_retention raised to the 7 day floor (was %)',
      (select cfg.event_retention from public.assignment_settings cfg);
    update public.assignment_settings set event_retention = interval '7 days'
     where event_retention < interval '7 days';
  end if;
end
$$;

alter table public.assignment_settings
  drop constraint if exists assignment_settings_event_retention_check;
alter table public.assignment_settings
  add constraint assignment_settings_event_retention_check
  check (event_retention >= interval '7 days');
comment on column public.assignment_settings.event_retention is
  'Age at which audit rows are purged; at least 7 days, so the secret key cannot aim the purge at recent history.';

-- The trail's sequence ------------------------------------------------------------------
-- Looked up, not named: on a database whose table was made by an earlier
-- migration the identity sequence's name is PostgreSQL's choice.
do $$
declare
  v_sequence text := pg_get_serial_sequence('public.device_assignment_events', 'id');
begin
  if v_sequence is not null then
    execute format('revoke all on sequence %s from public, anon, authenticated, service_role',
      v_sequence);
  end if;
end
$$;

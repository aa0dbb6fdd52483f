-- Upgrade hardening: the security model and the column contract hold whatever
-- the project had before the bundle. A project that already pushed the earlier
-- migrations gets this one alone, so it repeats no earlier step; it only
-- removes what an existing database brings along:
--
--   * policies of its own on our tables (a `using (true)` select policy lets
--     every user read every device and its live QR code),
--   * grants to PUBLIC (anon and authenticated inherit them, so revoking from
--     those two roles is not enough),
--   * indexes identical to ours (each write maintains both).
--
-- Columns the project already had under our names are brought to our contract
-- in the schema migration, before the rules' views (`select d.*`) pin their types.
--
-- Every step is a no-op on a database the bundle built, so re-applying it is safe.

-- Policies ----------------------------------------------------------------------
-- The tables are ours, and so is who may see which rows: every policy on them
-- that the bundle did not create is dropped (each is named in a notice, so
-- the project can see what it had). That alone would not survive the next
-- "Enable read access for all users" clicked in the dashboard: permissive
-- policies are OR-ed, so one `using (true)` opens every row again. A
-- restrictive policy is AND-ed with all of them, so for the roles a request
-- runs as, a device is reachable only by its owner whatever is added later.
-- It grants nothing by itself: "owners read their devices" still does that.
-- service_role and the security definer functions bypass RLS, as before.
do $$
declare
  p record;
begin
  for p in
    select pol.polname, pol.polrelid::regclass as table_name,
           pg_get_expr(pol.polqual, pol.polrelid) as using_expr
    from pg_policy pol
    where pol.polrelid in ('public.devices'::regclass, 'public.backend_servers'::regclass,
                           'public.device_assignment_events'::regclass,
                           'public.assignment_settings'::regclass)
      and pol.polname not in ('owners read their devices', 'devices reach only their owner')
  loop
    raise notice 'dropping policy "%" on % (using %): the bundle decides access to this table',
      p.polname, p.table_name, coalesce(p.using_expr, 'nothing');
    execute format('drop policy %I on %s', p.polname, p.table_name);
  end loop;
end
$$;

drop policy if exists "devices reach only their owner" on public.devices;
create policy "devices reach only their owner" on public.devices
  as restrictive for all to anon, authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

-- Grants --------------------------------------------------------------------------
-- The schema migration revokes from anon and authenticated; a grant to PUBLIC
-- reaches both anyway. The audit trail's identity sequence got the default
-- privileges of `public` (usage for anon and authenticated), which nothing needs.
revoke all on public.backend_servers, public.devices, public.device_assignment_events,
  public.assignment_settings from public;
revoke all on sequence public.device_assignment_events_id_seq from public, anon, authenticated;

-- Indexes -------------------------------------------------------------------------
-- An index identical to one of ours (same definition once the name is taken
-- out, the test of splinter's lint 0009_duplicate_index) is dropped; ours is
-- kept, so the schema migration's `create index if not exists` stays true.
-- Indexes that back a constraint are left alone, and so is any index that
-- differs in the least (columns, order, predicate, uniqueness).
do $$
declare
  v_duplicates text[][];
  v_pair text[];
begin
  -- Collected first: each drop changes the catalog the query reads.
  select coalesce(array_agg(array[theirs.indexname::text, theirs.tablename::text, ours.indexname::text]), '{}')
    into v_duplicates
  from pg_indexes ours
  join pg_indexes theirs
    on theirs.schemaname = ours.schemaname and theirs.tablename = ours.tablename
   and theirs.indexname <> ours.indexname
   and replace(theirs.indexdef, theirs.indexname, '') = replace(ours.indexdef, ours.indexname, '')
  join pg_class theirs_index
    on theirs_index.relname = theirs.indexname
   and theirs_index.relnamespace = 'public'::regnamespace
  where ours.schemaname = 'public'
    and ours.indexname in ('backend_servers_server_name_key', 'devices_connecting_by_server',
      'devices_claim_queue', 'devices_connecting_by_last_progress', 'devices_qr_to_expire',
      'devices_user_id', 'device_assignment_events_device', 'device_assignment_events_created_at')
    and not exists (select from pg_constraint k where k.conindid = theirs_index.oid);

  if cardinality(v_duplicates) = 0 then
    return;
  end if;
  foreach v_pair slice 1 in array v_duplicates loop
    raise notice 'dropping index % on public.%: identical to %', v_pair[1], v_pair[2], v_pair[3];
    execute format('drop index public.%I', v_pair[1]);
  end loop;
end
$$;

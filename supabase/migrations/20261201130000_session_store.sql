-- A linked WhatsApp session outlives its server (issue 11, database half):
--
--   * one writer: every move of a device (heal, claim, operator, shutdown,
--     session failover) goes through device_assignment.move_devices, which
--     bumps the epoch, clears what the move must clear and writes the audit row;
--   * the session store: a device's Baileys auth state as opaque entries
--     (type, id) -> value, written and read only by the device's current
--     server at the current epoch;
--   * status `reconnecting`: a linked device whose server is not live is handed
--     to a live server, which resumes the stored session without a QR.
--
-- Replaces, with the same signatures, the functions of earlier migrations that
-- wrote a move themselves or must know the new status. Return types stay as
-- they were (`create or replace` cannot change them, and re-applying the
-- earlier migrations must keep working): a claimed device to resume is a row
-- of claim_devices with status `reconnecting`.

-- Audit reason ----------------------------------------------------------------------

alter table public.device_assignment_events
  drop constraint if exists device_assignment_events_reason_check;
alter table public.device_assignment_events
  add constraint device_assignment_events_reason_check check (reason in (
    'server_inactive', 'stale_qr', 'user_request', 'operator',
    'maintenance', 'server_shutdown', 'claimed', 'session_failover'
  )) not valid;
alter table public.device_assignment_events validate constraint device_assignment_events_reason_check;

-- Indexes for the failover rule: linked devices are most of the table, so the
-- ones whose server died are found from the (few) servers that are not live.
create index if not exists devices_linked_by_server
  on public.devices (assigned_server_id)
  where status in ('connected', 'reconnecting');
create index if not exists devices_resume_queue
  on public.devices (connecting_since nulls first, id)
  where status = 'reconnecting' and assigned_server_id is null;
create index if not exists devices_unassigned_connected
  on public.devices (id)
  where status = 'connected' and assigned_server_id is null;

-- The session store -------------------------------------------------------------------
-- Not in an exposed schema, RLS on and no policy, no grant to anyone: only the
-- fenced security definer functions below read and write it. Values are opaque
-- (the backend encrypts them); the audit trail never copies them.
create table if not exists device_assignment.device_sessions (
  device_id uuid not null references public.devices (id) on delete cascade,
  type text not null check (length(type) between 1 and 100),
  id text not null check (length(id) between 1 and 500),
  value text not null,
  updated_at timestamptz not null default now(),
  primary key (device_id, type, id)
);
comment on table device_assignment.device_sessions is
  'WhatsApp session state per device (Baileys creds and signal keys), opaque values; fenced access only.';
alter table device_assignment.device_sessions enable row level security;
revoke all on device_assignment.device_sessions from public, anon, authenticated, service_role;

-- Failover rule ----------------------------------------------------------------------------
-- A session nobody holds: a device that is linked (`connected`) or being resumed
-- (`reconnecting`) whose server is missing or not live. Two halves, like
-- orphaned_devices, each reached through its own partial index.
create or replace view device_assignment.sessions_to_fail_over as
select d.*
from public.devices d
where d.status in ('connected', 'reconnecting')
  and d.assigned_server_id is null
union all
select d.*
from public.backend_servers s
join public.devices d on d.assigned_server_id = s.id and d.status in ('connected', 'reconnecting')
where not exists (select from device_assignment.live_servers l where l.id = s.id);

-- The same rule, enumerated without reading a device when none qualifies (see
-- connecting_on_non_live_servers for why OFFSET 0).
create or replace function device_assignment.session_to_fail_over_ids()
returns setof uuid
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
    select d.id from public.devices d
    where d.status = 'reconnecting' and d.assigned_server_id is null
    union all
    select d.id from public.devices d
    where d.status = 'connected' and d.assigned_server_id is null
    union all
    select x.id
    from public.backend_servers s
    cross join lateral (
      select d.id
      from public.devices d
      where d.assigned_server_id = s.id and d.status in ('connected', 'reconnecting')
      offset 0
    ) x
    where not exists (select from device_assignment.live_servers l where l.id = s.id);
end;
$$;

-- The one writer ---------------------------------------------------------------------------
-- Moves each locked device p_device_ids[i] to p_to_server_ids[i] (null: no
-- server). The caller has locked the device rows (FOR UPDATE, in id order or
-- SKIP LOCKED) and decided the moves; this applies them. Every move:
--   * bumps the epoch, so the server the device leaves is fenced;
--   * clears the QR (it was the old server's);
--   * writes one audit row;
--   * moves load between servers: the receiving server's, and the leaving
--     server's only while it is live (a server that is not live gets its load
--     from its next heartbeat; not locking its row keeps claims from waiting on
--     a maintenance pass that holds it).
-- What else a move changes depends on its kind:
--   * a pairing move (any reason but `claimed` and `session_failover`) to a
--     server spends one of the device's max_reassignments and starts the cooldown;
--   * `session_failover`: the device becomes `reconnecting` when a session is
--     stored (a `creds` entry), else `connecting` with a fresh pairing budget;
--     it spends nothing: a server's death is not the device's fault;
--   * p_status, when given, sets the status (with p_error as last_error).
create or replace function device_assignment.move_devices(
  p_device_ids uuid[],
  p_to_server_ids uuid[],
  p_reason text,
  p_actor text,
  p_status text default null,
  p_error text default null
)
returns table (device_id uuid, from_server_id uuid, to_server_id uuid, epoch bigint, status text)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_spends boolean := p_reason not in ('claimed', 'session_failover');
  v_moved_ids uuid[];
  v_from uuid[];
  v_to uuid[];
  v_epochs bigint[];
  v_status text[];
  v_live_from uuid[];
begin
  if coalesce(cardinality(p_device_ids), 0) = 0 then
    return;
  end if;

  with plan as (
    select m.device_id, m.to_server_id, d.assigned_server_id as from_server_id,
           case
             when p_status is not null then p_status
             when p_reason = 'session_failover' then
               case when exists (select from device_assignment.device_sessions s
                                  where s.device_id = d.id and s.type = 'creds')
                    then 'reconnecting' else 'connecting' end
             else d.status
           end as new_status,
           d.status as old_status
    from unnest(p_device_ids, p_to_server_ids) as m(device_id, to_server_id)
    join public.devices d on d.id = m.device_id
  ),
  moved as (
    update public.devices d
       set assigned_server_id = p.to_server_id,
           assignment_epoch = d.assignment_epoch + 1,
           assigned_at = case when p.to_server_id is null then null else now() end,
           last_reassigned_at = case when v_spends and p.to_server_id is not null then now()
                                     else d.last_reassigned_at end,
           reassign_count = case
                              when p.new_status = 'connecting' and p.old_status <> 'connecting' then 0
                              when v_spends and p.to_server_id is not null then d.reassign_count + 1
                              else d.reassign_count
                            end,
           status = p.new_status,
           connecting_since = case
                                when p.new_status in ('connecting', 'reconnecting')
                                     and p.old_status is distinct from p.new_status then now()
                                else d.connecting_since
                              end,
           last_error = case when p_status is not null then p_error else d.last_error end,
           qr_code = null,
           qr_updated_at = null,
           qr_expires_at = null,
           updated_at = now()
      from plan p
     where d.id = p.device_id
    returning d.id, p.from_server_id, p.to_server_id, d.assignment_epoch, d.status
  ),
  audit as (
    insert into public.device_assignment_events
      (device_id, from_server_id, to_server_id, epoch, reason, actor)
    select m.id, m.from_server_id, m.to_server_id, m.assignment_epoch, p_reason, p_actor
    from moved m
  )
  select array_agg(m.id), array_agg(m.from_server_id), array_agg(m.to_server_id),
         array_agg(m.assignment_epoch), array_agg(m.status)
    into v_moved_ids, v_from, v_to, v_epochs, v_status
  from moved m;

  if v_moved_ids is null then
    return;
  end if;

  -- Only live leaving servers: see above.
  select array_agg(f.id) into v_live_from
  from unnest(v_from) f(id)
  where exists (select from device_assignment.live_servers l where l.id = f.id);

  -- Server rows are locked in id order before their load changes, so two
  -- transactions moving devices between the same servers never deadlock.
  -- NO KEY UPDATE, like the load update itself, does not conflict with the
  -- KEY SHARE locks that the devices foreign key took above.
  perform from public.backend_servers s
   where s.id = any(v_live_from) or s.id = any(v_to)
   order by s.id
   for no key update;

  update public.backend_servers s
     set current_load = greatest(coalesce(s.current_load, 0) + c.delta, 0)
    from (
      select server_id, sum(delta)::integer as delta
      from (
        select unnest(v_to) as server_id, 1 as delta
        union all
        select unnest(v_live_from), -1
      ) changes
      where server_id is not null
      group by server_id
    ) c
   where s.id = c.server_id and c.delta <> 0;

  return query
    select * from unnest(v_moved_ids, v_from, v_to, v_epochs, v_status);
end;
$$;

-- Moves devices to the servers plan_assignment picks, through the one writer.
-- A device for which no server has room is left unassigned for the next claim;
-- a device that was already unassigned and still finds no room is left
-- untouched. Rows locked elsewhere are skipped, never waited for.
create or replace function device_assignment.assign_devices(
  p_device_ids uuid[],
  p_reason text,
  p_actor text,
  p_avoid_current boolean default false,
  p_dry_run boolean default false,
  p_exclude_server uuid default null
)
returns table (device_id uuid, from_server_id uuid, to_server_id uuid, epoch bigint)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_locked uuid[];
  v_id uuid;
  v_ids uuid[];
  v_to uuid[];
begin
  if coalesce(cardinality(p_device_ids), 0) = 0 then
    return;
  end if;

  if p_avoid_current and cardinality(p_device_ids) > 1 then
    foreach v_id in array p_device_ids loop
      return query
        select * from device_assignment.assign_devices(
          array[v_id], p_reason, p_actor, true, p_dry_run, p_exclude_server);
    end loop;
    return;
  end if;

  if p_dry_run then
    return query
      select p.device_id, p.from_server_id, p.to_server_id, d.assignment_epoch + 1
      from device_assignment.plan_assignment(p_device_ids, p_avoid_current, p_exclude_server) p
      join public.devices d on d.id = p.device_id
      where p.to_server_id is not null or p.from_server_id is not null;
    return;
  end if;

  select array_agg(l.id) into v_locked
  from (
    select d.id from public.devices d
    where d.id = any(p_device_ids)
    order by d.id
    for update skip locked
  ) l;

  select array_agg(p.device_id), array_agg(p.to_server_id) into v_ids, v_to
  from device_assignment.plan_assignment(v_locked, p_avoid_current, p_exclude_server) p
  where p.to_server_id is not null or p.from_server_id is not null;

  return query
    select m.device_id, m.from_server_id, m.to_server_id, m.epoch
    from device_assignment.move_devices(v_ids, v_to, p_reason, p_actor) m;
end;
$$;

-- The healing policy, shared by get_device_qr (one device) and maintenance (all):
-- lock the candidates, then decide from what is committed now, so two healers
-- never move the same device twice. Orphaned and stale devices past
-- max_reassignments go to `error`; those in cooldown wait; the rest move.
-- Sessions nobody holds fail over at once, whatever their budget or cooldown.
create or replace function device_assignment.heal_devices(p_device_ids uuid[], p_actor text)
returns table (device_id uuid, action text, from_server_id uuid, to_server_id uuid)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_locked uuid[];
  v_due uuid[];
  v_orphaned uuid[];
  v_stale uuid[];
  v_failover uuid[];
  v_max integer;
begin
  select array_agg(l.id) into v_locked
  from (
    select d.id from public.devices d
    where d.id = any(p_device_ids) and d.status in ('connecting', 'connected', 'reconnecting')
    order by d.id
    for update skip locked
  ) l;
  if v_locked is null then
    return;
  end if;

  select cfg.max_reassignments into v_max from public.assignment_settings cfg;

  select array_agg(d.id) into v_due
  from public.devices d
  where d.id = any(v_locked)
    and d.reassign_count >= v_max
    and (exists (select from device_assignment.orphaned_devices o where o.id = d.id)
         or exists (select from device_assignment.stale_devices s where s.id = d.id));

  return query
    select m.device_id, 'moved_to_error'::text, m.from_server_id, null::uuid
    from device_assignment.move_devices(v_due, array_fill(null::uuid, array[coalesce(cardinality(v_due), 0)]),
                                        'maintenance', p_actor, 'error') m;
  update public.devices d
     set last_error = 'max_reassignments_exceeded: moved ' || d.reassign_count
                      || ' times without producing a QR'
   where d.id = any(v_due);

  select array_agg(o.id) into v_orphaned
  from device_assignment.orphaned_devices o
  where o.id = any(v_locked)
    and o.reassign_count < v_max
    and device_assignment.cooldown_remaining(o.last_reassigned_at) = interval '0';

  select array_agg(s.id) into v_stale
  from device_assignment.stale_devices s
  where s.id = any(v_locked)
    and s.reassign_count < v_max
    and device_assignment.cooldown_remaining(s.last_reassigned_at) = interval '0';

  select array_agg(f.id) into v_failover
  from device_assignment.sessions_to_fail_over f
  where f.id = any(v_locked);

  return query
    select a.device_id,
           case when a.to_server_id is null then 'left_unassigned' else 'reassigned_orphan' end,
           a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_orphaned, 'server_inactive', p_actor) a;

  return query
    select a.device_id, 'reassigned_stale'::text, a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_stale, 'stale_qr', p_actor, true) a;

  return query
    select a.device_id,
           case when a.to_server_id is null then 'left_unassigned' else 'session_failover' end,
           a.from_server_id, a.to_server_id
    from device_assignment.assign_devices(v_failover, 'session_failover', p_actor) a;
end;
$$;

-- The devices a server must work on: those it holds (`claimed` false) and
-- those it takes now (`claimed` true). A row with status `reconnecting` is a
-- session to resume from the store, not a QR to show.
create or replace function device_assignment.claim_devices(p_server_id uuid, p_limit integer)
returns table (
  device_id uuid,
  assignment_epoch bigint,
  device_name text,
  status text,
  qr_expires_at timestamptz,
  claimed boolean
)
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_server device_assignment.live_servers;
  v_owned integer;
  v_room integer;
  v_locked uuid[];
  v_ids uuid[];
  v_actor text;
begin
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_limit'), 'A limit from 1 to 10000.');
  end if;
  select l.* into v_server from device_assignment.live_servers l where l.id = p_server_id;
  if not found then
    perform device_assignment.raise_api_error('server_not_live', 409, null,
      'Call server_heartbeat first; a server whose lease lapsed may not claim devices.');
  end if;
  v_actor := 'server:' || v_server.server_name;

  -- Sessions to resume first: their users are offline until they are.
  return query
    select * from (
      select d.id, d.assignment_epoch, d.device_name, d.status, d.qr_expires_at, false
      from public.devices d
      where d.status = 'reconnecting' and d.assigned_server_id = p_server_id
      order by d.connecting_since nulls first, d.id
      limit p_limit
    ) r
    union all
    select * from (
      select d.id, d.assignment_epoch, d.device_name, d.status, d.qr_expires_at, false
      from public.devices d
      where d.status = 'connecting' and d.assigned_server_id = p_server_id
      order by d.connecting_since nulls first, d.id
      limit p_limit
    ) c
    limit p_limit;
  get diagnostics v_owned = row_count;

  v_room := p_limit - v_owned;
  if v_server.max_capacity is not null then
    v_room := least(v_room, v_server.max_capacity - coalesce(v_server.current_load, 0));
  end if;
  if v_room <= 0 then
    return;
  end if;

  -- Two claimers never take the same device: lock candidates, skipping rows
  -- another claimer holds, then decide in a new statement, whose fresh snapshot
  -- sees every claim committed meanwhile. (Deciding in the locking statement is
  -- not enough: its re-check of a locked row cannot see through the anti-join
  -- that defines "orphaned".) First the claim queue, then sessions nobody
  -- holds, then connecting devices of servers that are not live; each reads
  -- about as many index entries as it takes, and a claim the queue fills
  -- reads no server (maintenance and get_device_qr hand sessions over too).
  select array_agg(t.id) into v_locked
  from (
    select d.id
    from public.devices d
    where d.status = 'connecting' and d.assigned_server_id is null
    order by d.connecting_since nulls first, d.id
    limit v_room
    for update of d skip locked
  ) t;

  if coalesce(cardinality(v_locked), 0) < v_room then
    select coalesce(v_locked, '{}') || array_agg(t.id) into v_locked
    from (
      select d.id
      from public.devices d
      where d.id = any(array(select device_assignment.session_to_fail_over_ids()))
      order by d.connecting_since nulls first, d.id
      limit v_room - coalesce(cardinality(v_locked), 0)
      for update of d skip locked
    ) t;
  end if;

  if coalesce(cardinality(v_locked), 0) < v_room then
    select coalesce(v_locked, '{}') || array_agg(t.id) into v_locked
    from (
      select d.id
      from public.devices d
      where d.id = any(array(select device_assignment.connecting_on_non_live_servers()))
      order by d.connecting_since nulls first, d.id
      limit v_room - coalesce(cardinality(v_locked), 0)
      for update of d skip locked
    ) t;
  end if;
  if coalesce(cardinality(v_locked), 0) = 0 then
    return;
  end if;

  select array_agg(f.id) into v_ids
  from device_assignment.sessions_to_fail_over f where f.id = any(v_locked);
  return query
    select m.device_id, m.epoch, d.device_name, m.status, d.qr_expires_at, true
    from device_assignment.move_devices(
      v_ids, array_fill(p_server_id, array[coalesce(cardinality(v_ids), 0)]), 'session_failover', v_actor) m
    join public.devices d on d.id = m.device_id;

  select array_agg(o.id) into v_ids
  from device_assignment.orphaned_devices o where o.id = any(v_locked);
  return query
    select m.device_id, m.epoch, d.device_name, m.status, d.qr_expires_at, true
    from device_assignment.move_devices(
      v_ids, array_fill(p_server_id, array[coalesce(cardinality(v_ids), 0)]), 'claimed', v_actor) m
    join public.devices d on d.id = m.device_id;
end;
$$;

-- A heartbeat's load never drops below the devices the database knows the
-- server is working on (assigned since its last claim, not yet in its count).
create or replace function device_assignment.server_heartbeat(
  p_server_name text,
  p_current_load integer,
  p_max_capacity integer,
  p_metadata jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_server public.backend_servers;
  v_timeout interval;
begin
  if p_server_name is null or length(btrim(p_server_name)) = 0 or length(p_server_name) > 200 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_server_name'), 'A server name of 1 to 200 characters.');
  end if;
  if p_current_load is null or p_current_load < 0 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_current_load'), 'A load of 0 or more.');
  end if;
  if p_max_capacity is not null and p_max_capacity <= 0 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_max_capacity'), 'A positive capacity, or null for unlimited.');
  end if;
  if p_metadata is not null and jsonb_typeof(p_metadata) <> 'object' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_metadata'), 'A JSON object.');
  end if;

  insert into public.backend_servers as s
    (server_name, is_active, is_healthy, current_load, max_capacity, last_health_ping, metadata)
  values
    (p_server_name, true, true, p_current_load, p_max_capacity, now(), coalesce(p_metadata, '{}'))
  on conflict (server_name) do update
    set is_active = true,
        is_healthy = true,
        current_load = greatest(excluded.current_load, (
          select count(*)::integer from public.devices d
          where d.assigned_server_id = s.id and d.status in ('connecting', 'reconnecting'))),
        max_capacity = excluded.max_capacity,
        last_health_ping = excluded.last_health_ping,
        metadata = excluded.metadata,
        updated_at = now()
  returning s.* into v_server;

  select cfg.heartbeat_timeout into v_timeout from public.assignment_settings cfg;

  return jsonb_build_object(
    'server_id', v_server.id,
    'server_name', v_server.server_name,
    'heartbeat_timeout_ms', device_assignment.interval_ms(v_timeout),
    'connecting_grace_ms', (select device_assignment.interval_ms(cfg.connecting_grace)
                              from public.assignment_settings cfg),
    'lease_expires_at', v_server.last_health_ping + v_timeout
  );
end;
$$;

-- `logged_out`: WhatsApp refused the stored session (the user unlinked the
-- device on the phone), or the server has none to resume. The session is
-- deleted and the device waits, `disconnected`, for its owner to pair again.
create or replace function device_assignment.report_device_status(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_status text,
  p_error text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_status text := case when p_status = 'logged_out' then 'disconnected' else p_status end;
  v_error text := case when p_status = 'logged_out' then 'logged_out' else left(p_error, 1000) end;
begin
  if p_status is null or p_status not in
       ('connecting', 'connected', 'disconnected', 'qr_timeout', 'error', 'logged_out') then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_status'),
      'One of connecting, connected, disconnected, qr_timeout, error, logged_out.');
  end if;

  perform device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);

  if p_status = 'logged_out' then
    delete from device_assignment.device_sessions s where s.device_id = p_device_id;
  end if;

  update public.devices d
     set status = v_status,
         last_error = case when v_status in ('error', 'qr_timeout', 'disconnected') then v_error end,
         qr_code = case when v_status = 'connecting' then d.qr_code end,
         qr_updated_at = case when v_status = 'connecting' then d.qr_updated_at end,
         qr_expires_at = case when v_status = 'connecting' then d.qr_expires_at end,
         connecting_since = case when v_status = 'connecting'
                                 then coalesce(d.connecting_since, now()) end,
         reassign_count = case when v_status = 'connected' then 0 else d.reassign_count end,
         updated_at = now()
   where d.id = p_device_id;

  return jsonb_build_object('device_id', p_device_id, 'accepted', true, 'status', v_status);
end;
$$;

-- Graceful drain: the server leaves the pool, its connecting devices go to
-- live servers and its linked ones fail over, at once, instead of waiting out
-- the heartbeat timeout.
create or replace function device_assignment.server_shutdown(p_server_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_name text;
  v_connecting uuid[];
  v_linked uuid[];
  v_reassigned integer;
  v_failed_over integer;
begin
  select s.server_name into v_name from public.backend_servers s where s.id = p_server_id;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;

  -- Move the devices first, never to this server, and only then mark it
  -- inactive: its row is then locked in the same id order as every other
  -- transaction's (see move_devices), so concurrent drains cannot deadlock.
  select array_agg(d.id) filter (where d.status = 'connecting'),
         array_agg(d.id) filter (where d.status <> 'connecting')
    into v_connecting, v_linked
  from public.devices d
  where d.assigned_server_id = p_server_id
    and d.status in ('connecting', 'connected', 'reconnecting');

  select count(*) filter (where a.to_server_id is not null) into v_reassigned
  from device_assignment.assign_devices(
    v_connecting, 'server_shutdown', 'server:' || v_name, false, false, p_server_id) a;

  select count(*) into v_failed_over
  from device_assignment.assign_devices(
    v_linked, 'session_failover', 'server:' || v_name, false, false, p_server_id) a;

  update public.backend_servers s
     set is_active = false, updated_at = now()
   where s.id = p_server_id;

  return jsonb_build_object(
    'server_id', p_server_id,
    'released', coalesce(cardinality(v_connecting), 0),
    'reassigned', v_reassigned,
    'sessions_handed_over', v_failed_over
  );
end;
$$;

-- A server that cannot resume a session (it never stored one, or does not know
-- how) may pair the device afresh: its QR turns a `reconnecting` device into a
-- `connecting` one, and the abandoned session is deleted, so a server unaware
-- of resumes is harmless.
create or replace function device_assignment.publish_device_qr(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_qr text,
  p_expires_at timestamptz
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_device public.devices;
begin
  if p_qr is null or length(p_qr) = 0 or length(p_qr) > 65536 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_qr'), 'A QR payload of 1 to 65536 characters.');
  end if;
  if p_expires_at is null or p_expires_at <= now() or p_expires_at > now() + interval '10 minutes' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_expires_at'), 'An expiry in the next 10 minutes.');
  end if;

  v_device := device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);
  if v_device.status not in ('connecting', 'reconnecting') then
    perform device_assignment.raise_api_error('not_connecting', 409,
      jsonb_build_object('device_id', p_device_id, 'status', v_device.status));
  end if;
  if v_device.status = 'reconnecting' then
    delete from device_assignment.device_sessions s where s.device_id = p_device_id;
  end if;

  update public.devices d
     set status = 'connecting',
         connecting_since = case when d.status = 'connecting' then d.connecting_since else now() end,
         qr_code = p_qr,
         qr_updated_at = now(),
         qr_expires_at = p_expires_at,
         last_error = null,
         updated_at = now()
   where d.id = p_device_id;

  return jsonb_build_object(
    'device_id', p_device_id,
    'accepted', true,
    'qr_updated_at', now(),
    'qr_expires_at', p_expires_at
  );
end;
$$;

-- The QR state the frontend renders, from a device row as it is now. A linked
-- device whose server is not live is `reconnecting`, never `connected`: nobody
-- holds its session (its row may be locked by a healer at this moment).
create or replace function device_assignment.qr_state(
  p_device public.devices,
  p_reason text,
  p_reassigned boolean
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_status text;
  v_server jsonb;
begin
  v_status := case
    when p_device.status = 'connected'
         and exists (select from device_assignment.live_servers l
                      where l.id = p_device.assigned_server_id) then 'connected'
    when p_device.status in ('connected', 'reconnecting') then 'reconnecting'
    when p_device.status = 'connecting' and device_assignment.is_qr_fresh(p_device.qr_expires_at)
      then 'ready'
    when p_device.status = 'connecting' then 'pending'
    when p_device.status = 'qr_timeout' then 'qr_timeout'
    when p_device.status = 'error' then 'error'
    else 'not_connecting'
  end;
  if p_device.assigned_server_id is not null then
    select jsonb_build_object('id', s.id, 'name', s.server_name) into v_server
    from public.backend_servers s where s.id = p_device.assigned_server_id;
  end if;

  return jsonb_build_object(
    'device_id', p_device.id,
    'status', v_status,
    'device_status', p_device.status,
    'qr', case when v_status = 'ready' then jsonb_build_object(
            'value', p_device.qr_code,
            'updated_at', p_device.qr_updated_at,
            'expires_at', p_device.qr_expires_at) end,
    'server', v_server,
    'reason', case
                when v_status in ('pending', 'reconnecting') then coalesce(p_reason, 'waiting_for_server')
                when v_status = 'not_connecting' then 'call_reassign_device'
              end,
    'reassigned', p_reassigned,
    'retry_after_ms', case
                        when v_status = 'ready' then 2000
                        when v_status in ('pending', 'reconnecting') and p_reason = 'no_active_servers'
                          then 5000
                        when v_status = 'pending' and p_reason = 'reassignment_cooldown' then
                          greatest(device_assignment.interval_ms(
                            device_assignment.cooldown_remaining(p_device.last_reassigned_at)), 1000)
                        when v_status in ('pending', 'reconnecting') then 1000
                      end,
    'epoch', p_device.assignment_epoch,
    'last_error', p_device.last_error
  );
end;
$$;

create or replace function device_assignment.get_device_qr(p_device_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_uid uuid := device_assignment.current_user_id();
  v_device public.devices;
  v_action text;
  v_reason text;
begin
  select d.* into v_device
  from public.devices d
  where d.id = p_device_id and d.user_id = v_uid;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;

  if (v_device.status = 'connecting' and not device_assignment.is_qr_fresh(v_device.qr_expires_at))
     or (v_device.status in ('connected', 'reconnecting')
         and exists (select from device_assignment.sessions_to_fail_over f where f.id = p_device_id)) then
    select h.action into v_action
    from device_assignment.heal_devices(array[p_device_id], 'user:' || v_uid) h;

    select d.* into v_device from public.devices d where d.id = p_device_id;

    v_reason := case
      when v_action = 'reassigned_orphan' then 'reassigned_from_inactive_server'
      when v_action = 'reassigned_stale' then 'reassigned_stale'
      when v_action = 'session_failover' and v_device.status = 'reconnecting' then 'session_failover'
      when v_action = 'session_failover' then 'no_stored_session'
      when v_device.status not in ('connecting', 'reconnecting') then null
      when not exists (select from device_assignment.live_servers) then 'no_active_servers'
      when v_device.status = 'reconnecting' then
        case when v_device.assigned_server_id is null then 'no_server_with_capacity'
             else 'resuming_session' end
      when exists (select from device_assignment.orphaned_devices o where o.id = p_device_id)
           or exists (select from device_assignment.stale_devices s where s.id = p_device_id) then
        case
          when device_assignment.cooldown_remaining(v_device.last_reassigned_at) > interval '0'
            then 'reassignment_cooldown'
          when v_device.assigned_server_id is null then 'waiting_for_server'
          else 'no_server_with_capacity'
        end
      else 'waiting_for_server'
    end;
  elsif v_device.status = 'reconnecting' then
    v_reason := 'resuming_session';
  end if;

  return device_assignment.qr_state(
    v_device, v_reason,
    coalesce(v_action in ('reassigned_orphan', 'reassigned_stale', 'session_failover'), false));
end;
$$;

-- Starts or restarts pairing of one device on a live server (preferring another
-- than the current one): the user's "connect" button and the operator's
-- reset-device. The caller has locked the row. A new pairing starts from no
-- session: a stored one would be resumed instead of showing a QR.
create or replace function device_assignment.restart_pairing(
  p_device public.devices,
  p_reason text,
  p_actor text,
  p_enforce_cooldown boolean
)
returns jsonb
language plpgsql
set search_path = ''
set jit = off
as $$
declare
  v_wait interval := device_assignment.cooldown_remaining(p_device.last_reassigned_at);
  v_moved record;
begin
  if p_device.status in ('connected', 'reconnecting') then
    perform device_assignment.raise_api_error('already_connected', 409, null,
      'The device is linked. Disconnect it before pairing again.');
  end if;
  if p_enforce_cooldown and v_wait > interval '0' then
    perform device_assignment.raise_api_error('cooldown', 429,
      jsonb_build_object('retry_after_ms', device_assignment.interval_ms(v_wait)));
  end if;
  if not exists (select from device_assignment.live_servers) then
    perform device_assignment.raise_api_error('no_active_servers', 503,
      jsonb_build_object('retry_after_ms', 5000));
  end if;

  delete from device_assignment.device_sessions s where s.device_id = p_device.id;
  update public.devices d
     set status = 'connecting',
         connecting_since = now(),
         last_error = null,
         updated_at = now()
   where d.id = p_device.id;

  select a.* into v_moved
  from device_assignment.assign_devices(array[p_device.id], p_reason, p_actor, true) a;

  if v_moved.to_server_id is null then
    perform device_assignment.raise_api_error('no_active_servers', 503,
      jsonb_build_object('retry_after_ms', 5000), 'Every live server is at capacity.');
  end if;

  -- A new pairing attempt: its reassignment budget starts now.
  update public.devices d set reassign_count = 0 where d.id = p_device.id;

  return jsonb_build_object(
    'device_id', p_device.id,
    'reassigned', true,
    'from_server', v_moved.from_server_id,
    'to_server', v_moved.to_server_id,
    'epoch', v_moved.epoch
  );
end;
$$;

-- One pass of fleet healing (see 20261128190400_operator_api.sql), now also
-- failing over sessions nobody holds.
create or replace function device_assignment.run_assignment_maintenance()
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_started timestamptz := clock_timestamp();
  v_marked integer;
  v_expired integer;
  v_candidates uuid[];
  v_result jsonb;
begin
  if not pg_try_advisory_xact_lock(hashtext('device_assignment.run_assignment_maintenance')) then
    return jsonb_build_object('skipped', true);
  end if;

  update public.backend_servers s
     set is_active = false, updated_at = now()
    from public.assignment_settings cfg
   where s.is_active
     and (s.last_health_ping is null or s.last_health_ping <= now() - cfg.heartbeat_timeout);
  get diagnostics v_marked = row_count;

  select array_agg(c.id) into v_candidates
  from (
    select o.id from device_assignment.orphaned_device_ids() o(id)
    union
    select s.id from device_assignment.stale_devices s
    union
    select f.id from device_assignment.session_to_fail_over_ids() f(id)
  ) c;

  select jsonb_build_object(
           'orphaned_reassigned', count(*) filter (where h.action = 'reassigned_orphan'),
           'stale_reassigned', count(*) filter (where h.action = 'reassigned_stale'),
           'sessions_failed_over', count(*) filter (where h.action = 'session_failover'),
           'left_unassigned', count(*) filter (where h.action = 'left_unassigned'),
           'moved_to_error', count(*) filter (where h.action = 'moved_to_error'))
    into v_result
  from device_assignment.heal_devices(v_candidates, 'maintenance') h;

  update public.devices d
     set qr_code = null, updated_at = now()
   where d.qr_code is not null and d.qr_expires_at <= now();
  get diagnostics v_expired = row_count;

  return v_result || jsonb_build_object(
    'skipped', false,
    'servers_marked_inactive', v_marked,
    'qr_expired', v_expired,
    'duration_ms', round(extract(epoch from clock_timestamp() - v_started) * 1000, 3)
  );
end;
$$;

-- The session store's API -----------------------------------------------------------------
-- Fenced exactly like publish_device_qr (fenced_device: the device's current
-- server at the current epoch, row locked), so a dead or partitioned server's
-- late write can never overwrite the new owner's session. Only a device being
-- paired, linked or resumed has a session to write; after `logged_out` or
-- `qr_timeout` the device is `fenced` for the store too.

-- The one validation of an entry batch: an array of at most 10,000
-- {"type", "id", "value"} objects; value a string (up to 1 MiB) or null.
create or replace function device_assignment.check_session_entries(p_entries jsonb)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_entries is null or jsonb_typeof(p_entries) <> 'array' or jsonb_array_length(p_entries) > 10000
     or exists (
       select from jsonb_array_elements(p_entries) e
       where jsonb_typeof(e) <> 'object'
          or jsonb_typeof(e -> 'type') is distinct from 'string'
          or length(e ->> 'type') not between 1 and 100
          or jsonb_typeof(e -> 'id') is distinct from 'string'
          or length(e ->> 'id') not between 1 and 500
          or not (e ? 'value')
          or jsonb_typeof(e -> 'value') not in ('string', 'null')
          or length(e ->> 'value') > 1048576) then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_entries'),
      'An array of at most 10000 {"type", "id", "value"} objects: type of 1 to 100 and id of 1 to '
      || '500 characters, value a string of at most 1 MiB, or null to delete the entry.');
  end if;
end;
$$;

create or replace function device_assignment.fenced_session_holder(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint
)
returns void
language plpgsql
set search_path = ''
set jit = off
as $$
declare
  v_device public.devices := device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);
begin
  if v_device.status not in ('connecting', 'connected', 'reconnecting') then
    perform device_assignment.raise_api_error('fenced', 409,
      jsonb_build_object('device_id', p_device_id, 'status', v_device.status),
      'The device is not being linked: it holds no session. Close its socket.');
  end if;
end;
$$;

-- Writes one batch atomically; a null value deletes its entry. Within a batch
-- the last entry for a (type, id) wins, as it would written one by one.
create or replace function device_assignment.device_session_write(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_entries jsonb
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_written integer;
  v_deleted integer;
begin
  perform device_assignment.check_session_entries(p_entries);
  perform device_assignment.fenced_session_holder(p_device_id, p_server_id, p_epoch);

  with batch as (
    select distinct on (e ->> 'type', e ->> 'id')
           e ->> 'type' as type, e ->> 'id' as id, e ->> 'value' as value
    from jsonb_array_elements(p_entries) with ordinality as a(e, n)
    order by e ->> 'type', e ->> 'id', n desc
  ),
  deleted as (
    delete from device_assignment.device_sessions s
     using batch b
     where b.value is null and s.device_id = p_device_id and s.type = b.type and s.id = b.id
    returning 1
  ),
  written as (
    insert into device_assignment.device_sessions as s (device_id, type, id, value, updated_at)
    select p_device_id, b.type, b.id, b.value, now()
    from batch b
    where b.value is not null
    on conflict (device_id, type, id) do update
      set value = excluded.value, updated_at = excluded.updated_at
    returning 1
  )
  select (select count(*) from written), (select count(*) from deleted) into v_written, v_deleted;

  return jsonb_build_object('device_id', p_device_id, 'accepted', true,
                            'written', v_written, 'deleted', v_deleted);
end;
$$;

-- {id: value} for the entries of one type that exist; p_ids null reads every
-- entry of the type (a backend loading or exporting a whole session).
create or replace function device_assignment.device_session_read(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_type text,
  p_ids text[]
)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_entries jsonb;
begin
  if p_type is null or length(p_type) not between 1 and 100 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_type'), 'An entry type of 1 to 100 characters.');
  end if;
  if cardinality(p_ids) > 10000 then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_ids'), 'At most 10000 ids, or null for every entry of the type.');
  end if;
  perform device_assignment.fenced_session_holder(p_device_id, p_server_id, p_epoch);

  select coalesce(jsonb_object_agg(s.id, s.value), '{}'::jsonb) into v_entries
  from device_assignment.device_sessions s
  where s.device_id = p_device_id and s.type = p_type
    and (p_ids is null or s.id = any(p_ids));
  return v_entries;
end;
$$;

-- Public, invoker wrappers exposed through PostgREST, for service_role only.
create or replace function public.device_session_write(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_entries jsonb
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.device_session_write(p_device_id, p_server_id, p_epoch, p_entries); end $$;

create or replace function public.device_session_read(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_type text,
  p_ids text[] default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.device_session_read(p_device_id, p_server_id, p_epoch, p_type, p_ids); end $$;

revoke all on function
  public.device_session_write(uuid, uuid, bigint, jsonb),
  public.device_session_read(uuid, uuid, bigint, text, text[]),
  device_assignment.device_session_write(uuid, uuid, bigint, jsonb),
  device_assignment.device_session_read(uuid, uuid, bigint, text, text[])
from public, anon, authenticated;

grant execute on function
  public.device_session_write(uuid, uuid, bigint, jsonb),
  public.device_session_read(uuid, uuid, bigint, text, text[]),
  device_assignment.device_session_write(uuid, uuid, bigint, jsonb),
  device_assignment.device_session_read(uuid, uuid, bigint, text, text[])
to service_role;

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;

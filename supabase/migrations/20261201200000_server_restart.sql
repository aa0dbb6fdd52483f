-- A server that crashes and comes back under the same name before its lease
-- runs out keeps its row, so the database never saw it die: its `connected`
-- devices stayed assigned to it, held by no process, since a claim lists only
-- the devices a server must work on (found by the chaos suite's "linked device
-- held by a live worker" invariant). Each process now names itself in its
-- heartbeat (`p_instance_id`, a random id per process); a new name for a
-- server fails its linked devices over to the new process at once. A backend
-- that sends no instance id behaves as before.

alter table public.backend_servers add column if not exists instance_id uuid;
comment on column public.backend_servers.instance_id is
  'The process behind the last heartbeat (server_heartbeat p_instance_id); a new one means the server restarted.';

drop function if exists public.server_heartbeat(text, integer, integer, jsonb);
drop function if exists device_assignment.server_heartbeat(text, integer, integer, jsonb);

-- server_heartbeat (20261201150000_least_privilege.sql) with p_instance_id.
create or replace function device_assignment.server_heartbeat(
  p_server_name text,
  p_current_load integer,
  p_max_capacity integer,
  p_metadata jsonb,
  p_instance_id uuid default null
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
  v_previous_instance uuid;
  v_resumed integer := 0;
  v_linked uuid[];
begin
  perform device_assignment.authorize_server(null, p_server_name);
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

  -- The process that sent the previous heartbeat, read under the row's lock.
  select s.instance_id into v_previous_instance
  from public.backend_servers s where s.server_name = p_server_name
  for no key update;

  insert into public.backend_servers as s
    (server_name, is_active, is_healthy, current_load, max_capacity, last_health_ping, metadata,
     instance_id)
  values
    (p_server_name, true, true, p_current_load, p_max_capacity, now(), coalesce(p_metadata, '{}'),
     p_instance_id)
  on conflict (server_name) do update
    set is_active = true,
        is_healthy = true,
        current_load = greatest(excluded.current_load, (
          select count(*)::integer from public.devices d
          where d.assigned_server_id = s.id and d.status in ('connecting', 'reconnecting'))),
        max_capacity = excluded.max_capacity,
        last_health_ping = excluded.last_health_ping,
        metadata = excluded.metadata,
        instance_id = coalesce(excluded.instance_id, s.instance_id),
        updated_at = now()
      -- Re-checked under the row lock: a disable committed since the guard read wins.
      where s.is_enabled
  returning s.* into v_server;
  if not found then
    perform device_assignment.server_disabled_error();
  end if;

  -- A new process under this name, before the old one's lease ran out (a crash
  -- and a quick restart): the linked sessions the old process held are held by
  -- nobody, and no claim lists a connected device. They fail over to this
  -- server's new process (epoch bumped, `reconnecting` when a session is
  -- stored), which its next claim resumes.
  if p_instance_id is not null and v_previous_instance is distinct from p_instance_id
     and v_previous_instance is not null then
    select array_agg(l.id) into v_linked
    from (select d.id from public.devices d
           where d.assigned_server_id = v_server.id and d.status = 'connected'
           order by d.id for update) l;
    select count(*)::integer into v_resumed
    from device_assignment.move_devices(
      v_linked, array_fill(v_server.id, array[coalesce(cardinality(v_linked), 0)]),
      'session_failover', 'server:' || v_server.server_name);
  end if;

  select cfg.heartbeat_timeout into v_timeout from public.assignment_settings cfg;

  return jsonb_build_object(
    'server_id', v_server.id,
    'server_name', v_server.server_name,
    'heartbeat_timeout_ms', device_assignment.interval_ms(v_timeout),
    'connecting_grace_ms', (select device_assignment.interval_ms(cfg.connecting_grace)
                              from public.assignment_settings cfg),
    'lease_expires_at', v_server.last_health_ping + v_timeout,
    'sessions_failed_over', v_resumed
  );
end;
$$;

create or replace function public.server_heartbeat(
  p_server_name text,
  p_current_load integer default 0,
  p_max_capacity integer default null,
  p_metadata jsonb default '{}'::jsonb,
  p_instance_id uuid default null
)
returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  return device_assignment.server_heartbeat(
    p_server_name, p_current_load, p_max_capacity, p_metadata, p_instance_id);
end
$$;

comment on function public.server_heartbeat(text, integer, integer, jsonb, uuid) is
  'Backend servers: renew this server''s lease (creating its row); p_instance_id names the process.';

revoke all on function
  public.server_heartbeat(text, integer, integer, jsonb, uuid),
  device_assignment.server_heartbeat(text, integer, integer, jsonb, uuid)
from public, anon, authenticated, service_role;
-- Backend accounts (authenticated) and operators; the guard, authorize_server,
-- keeps an account to its own server name.
grant execute on function
  public.server_heartbeat(text, integer, integer, jsonb, uuid),
  device_assignment.server_heartbeat(text, integer, integer, jsonb, uuid)
to authenticated, service_role;

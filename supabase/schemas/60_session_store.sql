-- The fenced session store: a device's WhatsApp session (Baileys creds and
-- keys), readable and writable only by the server that holds the device now.

create table "device_assignment"."device_sessions" (
  "device_id"  uuid                     not null,
  "type"       text                     not null,
  "id"         text                     not null,
  "value"      text                     not null,
  "updated_at" timestamp with time zone not null default now(),
  constraint "device_sessions_id_check" check (((length(id) >= 1) AND (length(id) <= 500))),
  constraint "device_sessions_pkey" primary key (device_id, type, id),
  constraint "device_sessions_type_check" check (((length(type) >= 1) AND (length(type) <= 100))),
  constraint "device_sessions_device_id_fkey" foreign key (device_id) references public.devices(id) on delete cascade
);

alter table "device_assignment"."device_sessions"
  enable row level security;

comment on table "device_assignment"."device_sessions" is 'WhatsApp session state per device (Baileys creds and signal keys), opaque values; fenced access only.';

revoke all on table device_assignment.device_sessions from public, anon, authenticated, service_role;

-- The one rule for where a device waits for a server: `reconnecting` when it
-- has stored creds to resume without a QR, else `connecting`, to pair anew.
-- move_devices applies it to a session failover, end_incidents to the devices
-- an incident releases.
create or replace function device_assignment.waiting_status(p_device_id uuid)
returns text
language sql
stable
set search_path = ''
as $$
  select case when exists (select from device_assignment.device_sessions s
                            where s.device_id = p_device_id and s.type = 'creds')
              then 'reconnecting' else 'connecting' end
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
  if v_device.status <> all(device_assignment.statuses('needs_server')) then
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

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.waiting_status(uuid),
  device_assignment.check_session_entries(jsonb),
  device_assignment.fenced_session_holder(uuid,uuid,bigint),
  device_assignment.device_session_write(uuid,uuid,bigint,jsonb),
  device_session_write(uuid,uuid,bigint,jsonb),
  device_assignment.device_session_read(uuid,uuid,bigint,text,text[]),
  device_session_read(uuid,uuid,bigint,text,text[])
from public, anon, authenticated, service_role;
grant execute on function
  device_assignment.device_session_write(uuid,uuid,bigint,jsonb),
  device_session_write(uuid,uuid,bigint,jsonb),
  device_assignment.device_session_read(uuid,uuid,bigint,text,text[]),
  device_session_read(uuid,uuid,bigint,text,text[])
to authenticated, service_role;

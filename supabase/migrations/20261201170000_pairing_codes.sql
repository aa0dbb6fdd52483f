-- Link with a phone number: pairing codes next to the QR (issue 12, database half).
--
--   * a user asks for a code for one of their own devices with a phone number
--     (request_pairing_code); the request is recorded beside the device, in a
--     table nobody but the functions below reads;
--   * the device's server finds the number in its claim (claim_devices'
--     `pairing_phone`), asks WhatsApp for a code and publishes it, fenced by
--     epoch like a QR (publish_device_pairing_code);
--   * get_device_qr serves the code while it is fresh, next to the QR.
--
-- The request belongs to the device, not to a server: a move (dead server,
-- stale, operator) leaves it in place, and because a code counts only at the
-- epoch it was published at, the new server is asked for a fresh one while
-- the old server's late code is fenced. Nothing here writes the audit trail:
-- the number never reaches it.
--
-- Redefines device_assignment.get_device_qr (one line: the `pairing_code`
-- field) and public.claim_devices (drop + create: a new result column).

-- Settings ------------------------------------------------------------------------------

alter table public.assignment_settings
  add column if not exists pairing_cooldown interval not null default '60 seconds',
  add column if not exists pairing_requests_per_hour integer not null default 10
    check (pairing_requests_per_hour > 0),
  add column if not exists pairing_request_ttl interval not null default '10 minutes';
comment on column public.assignment_settings.pairing_cooldown is
  'Least time between two pairing-code requests for one device (WhatsApp flags numbers that ask too often).';
comment on column public.assignment_settings.pairing_requests_per_hour is
  'Pairing-code requests one user may make in any hour.';
comment on column public.assignment_settings.pairing_request_ttl is
  'How long a pairing-code request (and its phone number) is kept when the device does not link.';

-- Tables --------------------------------------------------------------------------------
-- Not in an exposed schema, RLS on and no policy, no grant: the phone number is
-- read only by the security definer functions below, which give it to the
-- device's current server (claim) and to nobody else.

-- At most one pending request per device. `phone` is E.164 without the `+`
-- (what Baileys' requestPairingCode takes). The code counts only at
-- `code_epoch`: a move bumps the device's epoch, which retires it.
create table if not exists device_assignment.pairing_requests (
  device_id uuid primary key references public.devices (id) on delete cascade,
  phone text not null check (phone ~ '^[1-9][0-9]{6,14}$'),
  requested_at timestamptz not null default now(),
  expires_at timestamptz not null,
  code text,
  code_epoch bigint,
  code_expires_at timestamptz,
  check ((code is null) = (code_epoch is null) and (code is null) = (code_expires_at is null))
);
create index if not exists pairing_requests_expiry on device_assignment.pairing_requests (expires_at);
comment on table device_assignment.pairing_requests is
  'Pending pairing-code requests: the number to link (E.164 digits) and the code the server published.';

-- When requests were made, without the number: what the cooldown and the
-- hourly cap count. Rows older than an hour are deleted (expire_pairing_requests).
create table if not exists device_assignment.pairing_request_log (
  user_id uuid not null,
  device_id uuid not null,
  requested_at timestamptz not null default now()
);
create index if not exists pairing_request_log_by_user
  on device_assignment.pairing_request_log (user_id, requested_at);
create index if not exists pairing_request_log_by_device
  on device_assignment.pairing_request_log (device_id, requested_at);
create index if not exists pairing_request_log_age
  on device_assignment.pairing_request_log (requested_at);

alter table device_assignment.pairing_requests enable row level security;
alter table device_assignment.pairing_request_log enable row level security;
revoke all on device_assignment.pairing_requests, device_assignment.pairing_request_log
  from public, anon, authenticated, service_role;

-- Rules ---------------------------------------------------------------------------------

-- The one check of a number's shape: E.164 (`+` optional), 7 to 15 digits, no
-- leading zero. Whether the number exists is the edge function's check, with a
-- maintained phone-number library; this keeps anything else out of the table.
create or replace function device_assignment.e164_digits(p_phone text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_phone is null or p_phone !~ '^\+?[1-9][0-9]{6,14}$' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_phone'),
      'A phone number in international (E.164) format, such as +14155550123.');
  end if;
  return ltrim(p_phone, '+');
end;
$$;

-- A code is fresh while the request and the code are both unexpired and it was
-- published at the device's current epoch. Served only while fresh; a server
-- is asked for a new one only while not.
create or replace function device_assignment.is_pairing_code_fresh(
  p_request device_assignment.pairing_requests,
  p_epoch bigint
)
returns boolean
language sql
stable
set search_path = ''
as $$
  select p_request.code is not null
     and p_request.code_epoch = p_epoch
     and p_request.code_expires_at > now()
     and p_request.expires_at > now()
$$;

-- `pairing_code` of get_device_qr: {code, expires_at} or null.
create or replace function device_assignment.pairing_code_state(p_device public.devices)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object('code', r.code, 'expires_at', r.code_expires_at)
  from device_assignment.pairing_requests r
  where r.device_id = p_device.id
    and p_device.status = 'connecting'
    and device_assignment.is_pairing_code_fresh(r, p_device.assignment_epoch)
$$;

-- The number a server must ask WhatsApp a code for, or null: a request that
-- has not expired, of a connecting device the server holds, with no fresh code
-- at its epoch. Only the server holding the device gets the number. Volatile,
-- so that called after a claim it sees the claim's moves.
create or replace function device_assignment.pairing_phone_wanted(p_server_id uuid, p_device_id uuid)
returns text
language sql
volatile
security definer
set search_path = ''
as $$
  select r.phone
  from device_assignment.pairing_requests r
  join public.devices d on d.id = r.device_id
  join public.backend_servers s on s.id = d.assigned_server_id
  where r.device_id = p_device_id
    and d.assigned_server_id = p_server_id
    -- Only to who may act as that server (20261201150000_least_privilege.sql).
    and device_assignment.caller() in ('operator', 'system', 'server:' || s.server_name)
    and d.status = 'connecting'
    and r.expires_at > now()
    and not device_assignment.is_pairing_code_fresh(r, d.assignment_epoch)
$$;

-- Deletes expired requests (and with them the numbers) and the log rows no
-- rule counts any more. Called by each request and each claim, so a number
-- outlives its request by at most one server poll while any server is live.
create or replace function device_assignment.expire_pairing_requests()
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_expired integer;
begin
  delete from device_assignment.pairing_requests r where r.expires_at <= now();
  get diagnostics v_expired = row_count;
  delete from device_assignment.pairing_request_log l
   using public.assignment_settings cfg
   where l.requested_at <= now() - greatest(interval '1 hour', cfg.pairing_cooldown);
  return v_expired;
end;
$$;

-- A request lives as long as the pairing attempt it belongs to: once the
-- device leaves `connecting` (linked, or the attempt failed or was stopped),
-- its number is deleted. A trigger, because legacy backends write the status
-- column directly, not only through report_device_status.
create or replace function device_assignment.end_pairing_request()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  delete from device_assignment.pairing_requests r where r.device_id = new.id;
  return null;
end;
$$;

drop trigger if exists devices_end_pairing_request on public.devices;
create trigger devices_end_pairing_request
  after update of status on public.devices
  for each row
  when (old.status = 'connecting' and new.status is distinct from 'connecting')
  execute function device_assignment.end_pairing_request();

-- User API ------------------------------------------------------------------------------

-- Records a request for a code on one of the caller's devices. A device that
-- is not pairing starts pairing (restart_pairing, through the one writer); one
-- that is pairing stays where it is. Asking again replaces the number and
-- retires the current code, so the server asks WhatsApp for a new one.
create or replace function device_assignment.request_pairing_code(p_device_id uuid, p_phone text)
returns jsonb
language plpgsql
security definer
set search_path = ''
set jit = off
as $$
declare
  v_uid uuid := device_assignment.current_user_id();
  v_phone text := device_assignment.e164_digits(p_phone);
  v_cfg public.assignment_settings;
  v_device public.devices;
  v_last timestamptz;
  v_count integer;
  v_oldest timestamptz;
  v_request device_assignment.pairing_requests;
begin
  select d.* into v_device
  from public.devices d
  where d.id = p_device_id and d.user_id = v_uid
  for update;
  if not found then
    perform device_assignment.raise_api_error('not_found', 404);
  end if;
  if v_device.status in ('connected', 'reconnecting') then
    perform device_assignment.raise_api_error('already_connected', 409, null,
      'The device is linked. Disconnect it before pairing again.');
  end if;

  select cfg.* into v_cfg from public.assignment_settings cfg;

  -- The device row lock above serializes requests for one device; this lock
  -- serializes one user's requests across devices, so two at once cannot both
  -- take the hourly cap's last place.
  perform pg_advisory_xact_lock(hashtextextended('device_assignment.pairing:' || v_uid::text, 0));

  select max(l.requested_at) into v_last
  from device_assignment.pairing_request_log l
  where l.device_id = p_device_id;
  if v_last > now() - v_cfg.pairing_cooldown then
    perform device_assignment.raise_api_error('cooldown', 429,
      jsonb_build_object('retry_after_ms',
        device_assignment.interval_ms(v_last + v_cfg.pairing_cooldown - now())),
      'One pairing-code request per device per ' || v_cfg.pairing_cooldown || '.');
  end if;

  select count(*), min(l.requested_at) into v_count, v_oldest
  from device_assignment.pairing_request_log l
  where l.user_id = v_uid and l.requested_at > now() - interval '1 hour';
  if v_count >= v_cfg.pairing_requests_per_hour then
    perform device_assignment.raise_api_error('rate_limited', 429,
      jsonb_build_object('retry_after_ms',
        device_assignment.interval_ms(v_oldest + interval '1 hour' - now())),
      'At most ' || v_cfg.pairing_requests_per_hour || ' pairing-code requests per hour.');
  end if;

  if v_device.status <> 'connecting' then
    perform device_assignment.restart_pairing(v_device, 'user_request', 'user:' || v_uid, false);
  end if;

  insert into device_assignment.pairing_requests as r (device_id, phone, requested_at, expires_at)
  values (p_device_id, v_phone, now(), now() + v_cfg.pairing_request_ttl)
  on conflict (device_id) do update
    set phone = excluded.phone,
        requested_at = excluded.requested_at,
        expires_at = excluded.expires_at,
        code = null,
        code_epoch = null,
        code_expires_at = null
  returning r.* into v_request;
  insert into device_assignment.pairing_request_log (user_id, device_id) values (v_uid, p_device_id);
  perform device_assignment.expire_pairing_requests();

  select d.* into v_device from public.devices d where d.id = p_device_id;
  return jsonb_build_object(
    'device_id', p_device_id,
    'requested_at', v_request.requested_at,
    'expires_at', v_request.expires_at,
    'epoch', v_device.assignment_epoch
  );
end;
$$;

-- get_device_qr, as 20261201150000_least_privilege.sql defines it, plus `pairing_code`.
create or replace function device_assignment.get_device_qr(p_device_id uuid, p_wait_id uuid default null)
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
  if p_wait_id is not null then
    perform device_assignment.hold_long_poll(v_uid, p_wait_id);
  end if;

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
    coalesce(v_action in ('reassigned_orphan', 'reassigned_stale', 'session_failover'), false))
    || jsonb_build_object('pairing_code', device_assignment.pairing_code_state(v_device));
end;
$$;


-- Server API ----------------------------------------------------------------------------

-- Fenced exactly like publish_device_qr (fenced_device: the device's current
-- server at the current epoch, row locked): a server the device has left gets
-- `fenced`, and its late code is never served. A code replaces the one before
-- it; QR rotations leave it alone.
create or replace function device_assignment.publish_device_pairing_code(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_code text,
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
  if p_code is null or p_code !~ '^[A-Za-z0-9-]{4,32}$' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_code'), 'A code of 4 to 32 letters, digits or dashes.');
  end if;
  if p_expires_at is null or p_expires_at <= now() or p_expires_at > now() + interval '10 minutes' then
    perform device_assignment.raise_api_error('invalid_argument', 400,
      jsonb_build_object('argument', 'p_expires_at'), 'An expiry in the next 10 minutes.');
  end if;

  v_device := device_assignment.fenced_device(p_device_id, p_server_id, p_epoch);
  if v_device.status <> 'connecting' then
    perform device_assignment.raise_api_error('not_connecting', 409,
      jsonb_build_object('device_id', p_device_id, 'status', v_device.status));
  end if;

  update device_assignment.pairing_requests r
     set code = p_code, code_epoch = p_epoch, code_expires_at = p_expires_at
   where r.device_id = p_device_id and r.expires_at > now();
  if not found then
    perform device_assignment.raise_api_error('no_pairing_request', 409,
      jsonb_build_object('device_id', p_device_id),
      'Nobody is waiting for a code for this device (the request expired or was answered).');
  end if;

  return jsonb_build_object('device_id', p_device_id, 'accepted', true, 'code_expires_at', p_expires_at);
end;
$$;

-- Public, invoker wrappers exposed through PostgREST -------------------------------------

create or replace function public.request_pairing_code(p_device_id uuid, p_phone text)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.request_pairing_code(p_device_id, p_phone); end $$;
comment on function public.request_pairing_code(uuid, text) is
  'Ask for a WhatsApp pairing code for one of the caller''s devices, to link it by phone number.';

create or replace function public.publish_device_pairing_code(
  p_device_id uuid,
  p_server_id uuid,
  p_epoch bigint,
  p_code text,
  p_expires_at timestamptz
)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.publish_device_pairing_code(p_device_id, p_server_id, p_epoch, p_code, p_expires_at); end $$;

-- claim_devices gains `pairing_phone`: a new result column changes the return
-- type, which `create or replace` cannot, hence drop and create (and the grants
-- of 20261128190300_server_api.sql again). The claim itself is unchanged.
drop function if exists public.claim_devices(uuid, integer);
create function public.claim_devices(p_server_id uuid, p_limit integer default 100)
returns table (
  device_id uuid,
  assignment_epoch bigint,
  device_name text,
  status text,
  qr_expires_at timestamptz,
  claimed boolean,
  pairing_phone text
)
language plpgsql
set search_path = ''
as $$
begin
  perform device_assignment.expire_pairing_requests();
  return query
    select c.*, device_assignment.pairing_phone_wanted(p_server_id, c.device_id)
    from device_assignment.claim_devices(p_server_id, p_limit) c;
end
$$;

revoke all on function
  public.request_pairing_code(uuid, text),
  device_assignment.request_pairing_code(uuid, text)
from public, anon, authenticated, service_role;
grant execute on function
  public.request_pairing_code(uuid, text),
  device_assignment.request_pairing_code(uuid, text)
to authenticated;

revoke all on function
  public.claim_devices(uuid, integer),
  public.publish_device_pairing_code(uuid, uuid, bigint, text, timestamptz),
  device_assignment.publish_device_pairing_code(uuid, uuid, bigint, text, timestamptz),
  device_assignment.pairing_phone_wanted(uuid, uuid),
  device_assignment.expire_pairing_requests()
from public, anon, authenticated;
grant execute on function
  public.claim_devices(uuid, integer),
  public.publish_device_pairing_code(uuid, uuid, bigint, text, timestamptz),
  device_assignment.publish_device_pairing_code(uuid, uuid, bigint, text, timestamptz),
  device_assignment.pairing_phone_wanted(uuid, uuid),
  device_assignment.expire_pairing_requests()
to service_role, authenticated; -- backend accounts: each function guards who may act as which server

-- PostgreSQL grants EXECUTE to PUBLIC on every new function, and a per-schema
-- default privilege cannot take that back: revoke it explicitly.
revoke execute on all functions in schema device_assignment from public;

-- Linking with a phone number: pairing-code requests, their limits, and what
-- a server publishes back.

create table "device_assignment"."pairing_requests" (
  "device_id"       uuid                     not null,
  "phone"           text                     not null,
  "requested_at"    timestamp with time zone not null default now(),
  "expires_at"      timestamp with time zone not null,
  "code"            text,
  "code_epoch"      bigint,
  "code_expires_at" timestamp with time zone,
  constraint "pairing_requests_check" check ((((code IS NULL) = (code_epoch IS NULL)) AND ((code IS NULL) = (code_expires_at IS NULL)))),
  constraint "pairing_requests_phone_check" check ((phone ~ '^[1-9][0-9]{6,14}$'::text)),
  constraint "pairing_requests_pkey" primary key (device_id),
  constraint "pairing_requests_device_id_fkey" foreign key (device_id) references public.devices(id) on delete cascade
);

alter table "device_assignment"."pairing_requests"
  enable row level security;

create index pairing_requests_expiry on device_assignment.pairing_requests using btree (expires_at);

comment on table "device_assignment"."pairing_requests" is 'Pending pairing-code requests: the number to link (E.164 digits) and the code the server published.';

revoke all on table device_assignment.pairing_requests from public, anon, authenticated, service_role;

create table "device_assignment"."pairing_request_log" (
  "user_id"      uuid                     not null,
  "device_id"    uuid                     not null,
  "requested_at" timestamp with time zone not null default now()
);

alter table "device_assignment"."pairing_request_log"
  enable row level security;

create index pairing_request_log_age on device_assignment.pairing_request_log using btree (requested_at);

create index pairing_request_log_by_device on device_assignment.pairing_request_log using btree (device_id, requested_at);

create index pairing_request_log_by_user on device_assignment.pairing_request_log using btree (user_id, requested_at);

revoke all on table device_assignment.pairing_request_log from public, anon, authenticated, service_role;

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
create or replace function device_assignment.pairing_phones_wanted(p_server_id uuid, p_device_ids uuid[])
returns table (device_id uuid, phone text)
language sql
volatile
security definer
set search_path = ''
as $$
  select r.device_id, r.phone
  from device_assignment.pairing_requests r
  join public.devices d on d.id = r.device_id
  join public.backend_servers s on s.id = d.assigned_server_id
  where r.device_id = any(p_device_ids)
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

create trigger devices_end_pairing_request
  after update of status on public.devices
  for each row
  when (((old.status = 'connecting'::text) AND (new.status IS DISTINCT FROM 'connecting'::text)))
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
  if v_device.status = any(device_assignment.statuses('holds_session')) then
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

-- Public, invoker wrappers exposed through PostgREST -------------------------------------
create or replace function public.request_pairing_code(p_device_id uuid, p_phone text)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.request_pairing_code(p_device_id, p_phone); end $$;

comment on function public.request_pairing_code(uuid, text) is
  'Ask for a WhatsApp pairing code for one of the caller''s devices, to link it by phone number.';

-- get_device_qr: the device's QR state, its pairing code, and the long-poll lease.
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

  -- A fleet incident that went quiet ends here as in maintenance: the device
  -- is back in the claim queue, and healed below like any orphan.
  if v_device.status = 'error' and device_assignment.end_quiet_incidents(v_device.last_error) > 0 then
    select d.* into v_device from public.devices d where d.id = p_device_id;
  end if;

  if (v_device.status = 'connecting' and not device_assignment.is_qr_fresh(v_device.qr_expires_at))
     or (v_device.status = any(device_assignment.statuses('holds_session'))
         and exists (select from device_assignment.sessions_to_fail_over f where f.id = p_device_id)) then
    select h.action into v_action
    from device_assignment.heal_devices(array[p_device_id], 'user:' || v_uid) h;

    select d.* into v_device from public.devices d where d.id = p_device_id;

    v_reason := case
      when v_action = 'reassigned_orphan' then 'reassigned_from_inactive_server'
      when v_action = 'reassigned_stale' then 'reassigned_stale'
      when v_action = 'session_failover' and v_device.status = 'reconnecting' then 'session_failover'
      when v_action = 'session_failover' then 'no_stored_session'
      when v_device.status <> all(device_assignment.statuses('waits_for_server')) then null
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

-- Public, invoker wrappers exposed through PostgREST ----------------------------------------
create or replace function public.get_device_qr(p_device_id uuid, p_wait_id uuid default null)
returns jsonb
language plpgsql
set search_path = ''
as $$ begin return device_assignment.get_device_qr(p_device_id, p_wait_id); end $$;

comment on function public.get_device_qr(uuid, uuid) is
  'QR state of one of the caller''s devices; heals an orphaned or stale device in the same call. '
  'p_wait_id: the long-poll this call re-checks for (at most long_polls_per_user at once).';

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.e164_digits(text),
  device_assignment.is_pairing_code_fresh(device_assignment.pairing_requests,bigint),
  device_assignment.pairing_code_state(devices),
  device_assignment.pairing_phones_wanted(uuid,uuid[]),
  device_assignment.expire_pairing_requests(),
  device_assignment.end_pairing_request(),
  device_assignment.request_pairing_code(uuid,text),
  request_pairing_code(uuid,text),
  device_assignment.get_device_qr(uuid,uuid),
  get_device_qr(uuid,uuid)
from public, anon, authenticated, service_role;
grant execute on function
  device_assignment.pairing_phones_wanted(uuid,uuid[]),
  device_assignment.expire_pairing_requests()
to authenticated, service_role;
grant execute on function
  device_assignment.request_pairing_code(uuid,text),
  request_pairing_code(uuid,text),
  device_assignment.get_device_qr(uuid,uuid),
  get_device_qr(uuid,uuid)
to authenticated;

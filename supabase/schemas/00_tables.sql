-- The tables: servers, devices, the audit trail and the settings, with their
-- indexes, row level security, policies and grants. Internals live in the
-- device_assignment schema, which the API does not expose.
--
-- This folder is the database as it stands now, each object defined once
-- (docs/schema.md: how to change it and write the migration).

create schema if not exists device_assignment;
comment on schema device_assignment is
  'Internals of device assignment. Not exposed by the API: the public wrappers call into it.';
revoke all on schema device_assignment from public;
grant usage on schema device_assignment to authenticated, service_role;

create table "public"."backend_servers" (
  "id"               uuid                     not null default gen_random_uuid(),
  "server_name"      text                     not null,
  "is_active"        boolean                  not null default true,
  "is_healthy"       boolean                  not null default true,
  "current_load"     integer                  not null default 0,
  "max_capacity"     integer,
  "last_health_ping" timestamp with time zone,
  "metadata"         jsonb                    not null default '{}'::jsonb,
  "created_at"       timestamp with time zone not null default now(),
  "updated_at"       timestamp with time zone not null default now(),
  "is_enabled"       boolean                  not null default true,
  "instance_id"      uuid,
  constraint "backend_servers_pkey" primary key (id)
);

alter table "public"."backend_servers"
  enable row level security;

create unique index backend_servers_server_name_key on public.backend_servers using btree (server_name);

comment on column "public"."backend_servers"."instance_id" is 'The process behind the last heartbeat (server_heartbeat p_instance_id); a new one means the server restarted.';

comment on column "public"."backend_servers"."is_enabled" is 'False: an operator disabled the server (set_backend_server_enabled); it is never live.';

revoke all on table public.backend_servers from public, anon, authenticated, service_role;
grant all on table public.backend_servers to service_role;

-- A device's status, the one definition: every status a device can hold, what
-- it means to the API, and what a server may report. The rules read it
-- (`device_assignment.statuses('holds_session')`) instead of repeating lists,
-- and name a status only where they act on that one state (claims take
-- `connecting`, resumes `reconnecting`). Adding a status is a row here (and the
-- package's DEVICE_STATUSES, which a test pins to it). Immutable, so a rule's
-- `status = any(device_assignment.statuses(...))` becomes a constant list when
-- it is planned, and the planner still matches it with the partial indexes.
--
-- A value missing here (one a legacy backend wrote) is kept as it is: the rules
-- leave such a device alone and owners see it as not connecting.
create or replace function device_assignment.device_statuses()
returns table (
  status text,            -- devices.status, or a report only (stored = false)
  stored boolean,         -- a device can hold it
  reportable boolean,     -- a server may report it (report_device_status)
  needs_server boolean,   -- it is assigned to a server, which moves it if it dies
  waits_for_server boolean, -- its server owes it a QR, a pairing code or a resume
  holds_session boolean,  -- it has a linked WhatsApp session (the fenced store)
  keeps_error boolean,    -- a final state: its last_error says why; idle until its owner acts
  meaning text
)
language sql
immutable
parallel safe
set search_path = ''
as $$
  values
    ('connecting',   true,  true,  true,  true,  false, false,
     'pairing: its server shows a QR or a pairing code'),
    ('reconnecting', true,  false, true,  true,  true,  false,
     'linked; its session moves to a live server, no QR'),
    ('connected',    true,  true,  true,  false, true,  false,
     'linked on its server'),
    ('disconnected', true,  true,  false, false, false, true,
     'idle: not connecting until its owner restarts pairing'),
    ('qr_timeout',   true,  true,  false, false, false, true,
     'the QR expired unscanned; idle until its owner restarts pairing'),
    ('error',        true,  true,  false, false, false, true,
     'its server failed it; idle until its owner restarts pairing'),
    ('logged_out',   false, true,  false, false, false, false,
     'a report only: WhatsApp ended the session; stored as disconnected, the session deleted')
$$;

-- The statuses with one property of device_statuses(), e.g. statuses('holds_session').
create or replace function device_assignment.statuses(p_property text)
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select coalesce(array_agg(s.status order by s.status), '{}')
  from device_assignment.device_statuses() s
  where (to_jsonb(s) ->> p_property)::boolean
$$;

revoke all on function device_assignment.device_statuses(), device_assignment.statuses(text)
from public, anon, authenticated, service_role;

-- Hot predicates: work lists (connecting, linked, resuming devices) are a small
-- slice of the table, so every index that maintenance and claims walk is partial.
create table "public"."devices" (
  "id"                 uuid                     not null default gen_random_uuid(),
  "user_id"            uuid                     not null,
  "device_name"        text,
  "status"             text                     not null default 'disconnected'::text,
  "qr_code"            text,
  "qr_updated_at"      timestamp with time zone,
  "qr_expires_at"      timestamp with time zone,
  "assigned_server_id" uuid,
  "assignment_epoch"   bigint                   not null default 0,
  "assigned_at"        timestamp with time zone,
  "connecting_since"   timestamp with time zone,
  "last_reassigned_at" timestamp with time zone,
  "reassign_count"     integer                  not null default 0,
  "last_error"         text,
  "created_at"         timestamp with time zone not null default now(),
  "updated_at"         timestamp with time zone not null default now(),
  constraint "devices_assigned_server_id_fkey" foreign key (assigned_server_id) references public.backend_servers(id) on delete set null,
  constraint "devices_pkey" primary key (id),
  constraint "devices_user_id_fkey" foreign key (user_id) references auth.users(id) on delete cascade
);

alter table "public"."devices"
  enable row level security;

create index devices_claim_queue on public.devices using btree (connecting_since nulls first, id)
  where ((status = 'connecting'::text) AND (assigned_server_id is null));

create index devices_connecting_by_last_progress on public.devices using btree (GREATEST(assigned_at, qr_updated_at))
  where (status = 'connecting'::text);

create index devices_connecting_by_server on public.devices using btree (assigned_server_id)
  where (status = 'connecting'::text);

-- Its list is statuses('holds_session'), written out: an index predicate is
-- fixed when the index is built (a pgTAP test pins the two together).
create index devices_linked_by_server on public.devices using btree (assigned_server_id)
  where (status = ANY (ARRAY['connected'::text, 'reconnecting'::text]));

create index devices_qr_to_expire on public.devices using btree (qr_expires_at)
  where (qr_code is not null);

create index devices_resume_queue on public.devices using btree (connecting_since nulls first, id)
  where ((status = 'reconnecting'::text) AND (assigned_server_id is null));

create index devices_resuming_since on public.devices using btree (assigned_at)
  where (status = 'reconnecting'::text);

create index devices_unassigned_connected on public.devices using btree (id)
  where ((status = 'connected'::text) AND (assigned_server_id is null));

create index devices_user_id on public.devices using btree (user_id);

create policy "devices reach only their owner" on "public"."devices"
  as restrictive
  for all
  to "anon", "authenticated"
  using ((user_id = ( select auth.uid() as uid)))
  with check ((user_id = ( SELECT auth.uid() AS uid)));

create policy "owners read their devices" on "public"."devices"
  for select
  to "authenticated"
  using ((user_id = ( select auth.uid() as uid)));

revoke all on table public.devices from public, anon, authenticated, service_role;
grant all on table public.devices to service_role;
grant select on table public.devices to authenticated;

create table "public"."device_assignment_events" (
  "id"             bigint                   generated always as identity not null,
  "device_id"      uuid                     not null,
  "from_server_id" uuid,
  "to_server_id"   uuid,
  "epoch"          bigint                   not null,
  "reason"         text                     not null,
  "actor"          text                     not null,
  "created_at"     timestamp with time zone not null default now(),
  "caller"         text,
  constraint "device_assignment_events_pkey" primary key (id),
  constraint "device_assignment_events_reason_check"
    check
    ((reason = ANY (ARRAY['server_inactive'::text, 'stale_qr'::text, 'user_request'::text, 'operator'::text, 'maintenance'::text, 'server_shutdown'::text, 'claimed'::text,
    'session_failover'::text, 'server_failure'::text, 'fleet_incident_ended'::text])))
);

alter table "public"."device_assignment_events"
  enable row level security;

create index device_assignment_events_created_at on public.device_assignment_events using btree (created_at);

create index device_assignment_events_device on public.device_assignment_events using btree (device_id, created_at);

comment on column "public"."device_assignment_events"."caller" is 'The credential behind the change: server:<name> (a backend account), operator (the secret key), user:<uuid>, or system (pg_cron, a database session). actor says on whose behalf.';

comment on table "public"."device_assignment_events" is 'Append-only audit of every assignment change. No foreign keys: the trail outlives devices and servers.';

revoke all on table public.device_assignment_events from public, anon, authenticated, service_role;
grant select on table public.device_assignment_events to service_role;

create table "public"."assignment_settings" (
  "singleton"                 boolean                  not null default true,
  "heartbeat_timeout"         interval                 not null default '00:00:30'::interval,
  "connecting_grace"          interval                 not null default '00:00:45'::interval,
  "reassign_cooldown"         interval                 not null default '00:00:15'::interval,
  "max_reassignments"         integer                  not null default 5,
  "event_retention"           interval                 not null default '30 days'::interval,
  "nominal_capacity"          integer                  not null default 100,
  "updated_at"                timestamp with time zone not null default now(),
  "long_polls_per_user"       integer                  not null default 5,
  "user_reassign_budget"      integer                  not null default 10,
  "user_reassign_window"      interval                 not null default '01:00:00'::interval,
  "pairing_cooldown"          interval                 not null default '00:01:00'::interval,
  "pairing_requests_per_hour" integer                  not null default 10,
  "pairing_request_ttl"       interval                 not null default '00:10:00'::interval,
  "incident_window"           interval                 not null default '00:02:00'::interval,
  constraint "assignment_settings_incident_window_check" check ((incident_window > '00:00:00'::interval)),
  constraint "assignment_settings_event_retention_check" check ((event_retention >= '7 days'::interval)),
  constraint "assignment_settings_long_polls_per_user_check" check ((long_polls_per_user > 0)),
  constraint "assignment_settings_max_reassignments_check" check ((max_reassignments > 0)),
  constraint "assignment_settings_nominal_capacity_check" check ((nominal_capacity > 0)),
  constraint "assignment_settings_pairing_requests_per_hour_check" check ((pairing_requests_per_hour > 0)),
  constraint "assignment_settings_pkey" primary key (singleton),
  constraint "assignment_settings_singleton_check" check (singleton),
  constraint "assignment_settings_user_reassign_budget_check" check ((user_reassign_budget > 0)),
  constraint "assignment_settings_user_reassign_window_check" check ((user_reassign_window > '00:00:00'::interval))
);

alter table "public"."assignment_settings"
  enable row level security;

comment on column "public"."assignment_settings"."incident_window" is 'A failure code reported by at least half of the live servers (and two) within this window is a fleet incident; one with no new report for this long ends.';

comment on column "public"."assignment_settings"."event_retention" is 'Age at which audit rows are purged; at least 7 days, so the secret key cannot aim the purge at recent history.';

comment on column "public"."assignment_settings"."pairing_cooldown" is 'Least time between two pairing-code requests for one device (WhatsApp flags numbers that ask too often).';

comment on column "public"."assignment_settings"."pairing_request_ttl" is 'How long a pairing-code request (and its phone number) is kept when the device does not link.';

comment on column "public"."assignment_settings"."pairing_requests_per_hour" is 'Pairing-code requests one user may make in any hour.';

revoke all on table public.assignment_settings from public, anon, authenticated, service_role;
grant all on table public.assignment_settings to service_role;

insert into public.assignment_settings (singleton) values (true) on conflict do nothing;

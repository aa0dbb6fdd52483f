-- Device assignment: tables, indexes, row level security.
--
-- Applies to an empty project and to one that already has `devices` and
-- `backend_servers` from the old system: tables are created when missing, and
-- every column is added when missing. Nothing is dropped or rewritten.

create schema if not exists device_assignment;
comment on schema device_assignment is
  'Internals of device assignment. Not exposed by the API: the public wrappers call into it.';
revoke all on schema device_assignment from public;

-- backend_servers ------------------------------------------------------------

create table if not exists public.backend_servers (
  id uuid primary key default gen_random_uuid()
);

-- devices --------------------------------------------------------------------

create table if not exists public.devices (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade
);

-- The columns of both tables, the one list of them. A missing column is added.
-- A column the project already had keeps its values but is brought to this
-- contract (a nullable reassign_count with nulls would keep an orphaned device
-- from ever being healed): its type is converted only where the conversion
-- keeps every value (else the push stops with a clear error), nulls of a
-- not-null column get our default, and our default is set only where the
-- project had none (its own may be what its application relies on). This runs
-- before the rules' views (`select d.*`) pin the column types.
do $$
declare
  c record;
  v_type regtype;
  v_notnull boolean;
  v_default text;
begin
  for c in
    select * from (values
      ('backend_servers', 'server_name', 'text'::regtype, false, null),
      ('backend_servers', 'is_active', 'boolean', true, 'true'),
      ('backend_servers', 'is_healthy', 'boolean', true, 'true'),
      ('backend_servers', 'current_load', 'integer', true, '0'),
      ('backend_servers', 'max_capacity', 'integer', false, null),
      ('backend_servers', 'last_health_ping', 'timestamptz', false, null),
      ('backend_servers', 'metadata', 'jsonb', true, '''{}''::jsonb'),
      ('backend_servers', 'created_at', 'timestamptz', true, 'now()'),
      ('backend_servers', 'updated_at', 'timestamptz', true, 'now()'),
      ('devices', 'user_id', 'uuid', false, null),
      ('devices', 'device_name', 'text', false, null),
      ('devices', 'status', 'text', true, '''disconnected''::text'),
      ('devices', 'qr_code', 'text', false, null),
      ('devices', 'qr_updated_at', 'timestamptz', false, null),
      ('devices', 'qr_expires_at', 'timestamptz', false, null),
      ('devices', 'assigned_server_id', 'uuid', false, null),
      ('devices', 'assignment_epoch', 'bigint', true, '0'),
      ('devices', 'assigned_at', 'timestamptz', false, null),
      ('devices', 'connecting_since', 'timestamptz', false, null),
      ('devices', 'last_reassigned_at', 'timestamptz', false, null),
      ('devices', 'reassign_count', 'integer', true, '0'),
      ('devices', 'last_error', 'text', false, null),
      ('devices', 'created_at', 'timestamptz', true, 'now()'),
      ('devices', 'updated_at', 'timestamptz', true, 'now()')
    ) as contract(table_name, column_name, column_type, not_null, default_sql)
  loop
    select a.atttypid::regtype, a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
      into v_type, v_notnull, v_default
    from pg_attribute a
    left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where a.attrelid = format('public.%I', c.table_name)::regclass
      and a.attname = c.column_name and not a.attisdropped;

    if not found then
      execute format('alter table public.%I add column %I %s %s %s', c.table_name, c.column_name,
        c.column_type, case when c.not_null then 'not null' else '' end,
        coalesce('default ' || c.default_sql, ''));
      continue;
    end if;

    if v_type <> c.column_type then
      if (v_type::text, c.column_type::text) not in (
           ('json', 'jsonb'), ('character varying', 'text'),
           ('smallint', 'integer'), ('smallint', 'bigint'), ('integer', 'bigint')) then
        raise exception 'public.%.% is %, the bundle needs %', c.table_name, c.column_name,
          v_type, c.column_type
          using hint = 'Convert the column yourself (no lossless conversion is known), then push again.';
      end if;
      -- The old default is of the old type; ours replaces it below.
      execute format('alter table public.%I alter column %I drop default, alter column %I type %s using %I::%s',
        c.table_name, c.column_name, c.column_name, c.column_type, c.column_name, c.column_type);
      v_default := null;
    end if;

    if c.default_sql is not null and v_default is null then
      execute format('alter table public.%I alter column %I set default %s',
        c.table_name, c.column_name, c.default_sql);
    end if;

    if c.not_null and not v_notnull then
      execute format('update public.%I set %I = %s where %I is null',
        c.table_name, c.column_name, c.default_sql, c.column_name);
      execute format('alter table public.%I alter column %I set not null', c.table_name, c.column_name);
    end if;
  end loop;
end
$$;

-- Legacy rows may lack a name; give them one they can be told apart by.
update public.backend_servers set server_name = 'legacy-' || id where server_name is null;
alter table public.backend_servers alter column server_name set not null;
create unique index if not exists backend_servers_server_name_key
  on public.backend_servers (server_name);



-- A legacy `assigned_server_id` may point at a server that no longer exists.
-- Such a reference names nobody, so it is cleared: the device is then plainly
-- unassigned and healed like any other. Every other value is kept as it is.
-- This is what lets "orphaned" be found through indexes (see the rules).
update public.devices d
   set assigned_server_id = null
 where d.assigned_server_id is not null
   and not exists (select from public.backend_servers s where s.id = d.assigned_server_id);

-- The contract's foreign key deletes to null; a legacy one with another rule
-- on the same column is replaced by it.
do $$
declare
  v_name name;
  v_rule "char";
begin
  select c.conname, c.confdeltype into v_name, v_rule
  from pg_constraint c
  where c.conrelid = 'public.devices'::regclass
    and c.contype = 'f'
    and c.conkey = array[(select a.attnum from pg_attribute a
                          where a.attrelid = 'public.devices'::regclass
                            and a.attname = 'assigned_server_id')];
  if v_name is not null and v_rule <> 'n' then
    execute format('alter table public.devices drop constraint %I', v_name);
    v_name := null;
  end if;
  if v_name is null then
    alter table public.devices
      add constraint devices_assigned_server_id_fkey
      foreign key (assigned_server_id) references public.backend_servers (id)
      on delete set null not valid;
    alter table public.devices validate constraint devices_assigned_server_id_fkey;
  end if;
end
$$;

-- Legacy rows predate assignment timestamps; date them from their last update
-- so the stale rule gives them the usual grace instead of treating them as new.
update public.devices
   set assigned_at = coalesce(updated_at, now())
 where assigned_at is null and assigned_server_id is not null;
update public.devices
   set connecting_since = coalesce(updated_at, now())
 where connecting_since is null and status = 'connecting';

-- Hot predicates: work lists are connecting devices only, a small slice of the
-- table, so every index that maintenance and claims walk is partial.
create index if not exists devices_connecting_by_server
  on public.devices (assigned_server_id)
  where status = 'connecting';
-- The claim queue: unassigned connecting devices, in the order claims take them.
create index if not exists devices_claim_queue
  on public.devices (connecting_since nulls first, id)
  where status = 'connecting' and assigned_server_id is null;
create index if not exists devices_connecting_by_last_progress
  on public.devices ((greatest(assigned_at, qr_updated_at)))
  where status = 'connecting';
create index if not exists devices_qr_to_expire
  on public.devices (qr_expires_at)
  where qr_code is not null;
create index if not exists devices_user_id on public.devices (user_id);

-- device_assignment_events -----------------------------------------------------

create table if not exists public.device_assignment_events (
  id bigint generated always as identity primary key,
  device_id uuid not null,
  from_server_id uuid,
  to_server_id uuid,
  epoch bigint not null,
  reason text not null check (reason in (
    'server_inactive', 'stale_qr', 'user_request', 'operator',
    'maintenance', 'server_shutdown', 'claimed'
  )),
  actor text not null,
  created_at timestamptz not null default now()
);
comment on table public.device_assignment_events is
  'Append-only audit of every assignment change. No foreign keys: the trail outlives devices and servers.';
create index if not exists device_assignment_events_device
  on public.device_assignment_events (device_id, created_at);
create index if not exists device_assignment_events_created_at
  on public.device_assignment_events (created_at);

-- assignment_settings ----------------------------------------------------------

create table if not exists public.assignment_settings (
  singleton boolean primary key default true check (singleton),
  heartbeat_timeout interval not null default '30 seconds',
  connecting_grace interval not null default '45 seconds',
  reassign_cooldown interval not null default '15 seconds',
  max_reassignments integer not null default 5 check (max_reassignments > 0),
  event_retention interval not null default '30 days',
  -- An uncapped server (max_capacity null) is compared with capped ones as if
  -- it could take this many devices.
  nominal_capacity integer not null default 100 check (nominal_capacity > 0),
  updated_at timestamptz not null default now()
);
insert into public.assignment_settings (singleton) values (true) on conflict do nothing;

-- Row level security and grants ----------------------------------------------------
-- Supabase grants everything in `public` to anon and authenticated by default.
-- Users only ever read their own devices; every write goes through the SQL API.

alter table public.backend_servers enable row level security;
alter table public.devices enable row level security;
alter table public.device_assignment_events enable row level security;
alter table public.assignment_settings enable row level security;

revoke all on public.backend_servers, public.devices, public.device_assignment_events,
  public.assignment_settings from anon, authenticated;
grant select on public.devices to authenticated;
grant all on public.backend_servers, public.devices, public.device_assignment_events,
  public.assignment_settings to service_role;

drop policy if exists "owners read their devices" on public.devices;
create policy "owners read their devices" on public.devices
  for select to authenticated
  using (user_id = (select auth.uid()));

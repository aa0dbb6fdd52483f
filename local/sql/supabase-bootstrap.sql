-- What every hosted Supabase database has before a project's first migration,
-- modelled on the supabase/postgres init scripts and the supabase/auth schema
-- (written for this stack, not copied): API roles, their grants and default
-- privileges, the `extensions` and `auth` schemas, `auth.users` and the JWT
-- helpers that PostgREST-style requests rely on.
--
-- Only what this bundle touches is reproduced. Run by local/db.sh as the
-- cluster's superuser, `supabase_admin`, as on a hosted project; `postgres`,
-- which the migrations and every tool connect as, is not a superuser.
--
-- Extensions a non-superuser cannot create are created here, ahead of the
-- migrations. On a hosted project `postgres` creates them itself: supautils
-- runs CREATE EXTENSION of a listed extension as supabase_admin
-- (supabase/postgres ansible/files/postgresql_config/conf.d/supautils.conf,
-- `supautils.privileged_extensions`), which plain PostgreSQL cannot do; so a
-- migration's `create extension if not exists` finds them made here.

create schema if not exists extensions;
create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;
-- Where the server has them: pg_stat_statements; pgTAP, which tests use (local/db.sh
-- loads its SQL where the server has no package of it); plpgsql_check, which
-- `supabase db lint` runs (a privileged extension on a hosted project).
do $$
declare
  v_name text;
begin
  foreach v_name in array array['pg_stat_statements', 'pgtap', 'plpgsql_check'] loop
    if exists (select from pg_available_extensions where name = v_name) then
      execute format('create extension if not exists %I with schema extensions', v_name);
    end if;
  end loop;
end
$$;

-- `postgres`, as supabase/postgres makes it: created a superuser, then demoted
-- (migrations/db/migrations/10000000000000_demote-postgres.sql), owner of the
-- project's database (migrate.sh: alter database postgres owner to postgres),
-- with the search path of init-scripts/00000000000003-post-setup.sql.
do $$
begin
  if not exists (select from pg_roles where rolname = 'postgres') then
    create role postgres login password 'postgres';
  end if;
end
$$;
alter role postgres nosuperuser createdb createrole login replication bypassrls;
alter role postgres set search_path to "$user", public, extensions;
do $$ begin execute format('alter database %I owner to postgres', current_database()); end $$;
-- migrations/20230306081037_grant_pg_monitor_to_postgres.sql,
-- migrations/20240606060239_grant_predefined_roles_to_postgres.sql
grant pg_monitor, pg_read_all_data, pg_signal_backend to postgres;
grant all on schema extensions to postgres;
grant all on all tables in schema extensions to postgres with grant option;
grant all on all routines in schema extensions to postgres with grant option;
grant all on all sequences in schema extensions to postgres with grant option;

do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit password 'postgres';
  end if;
  if not exists (select from pg_roles where rolname = 'supabase_admin') then
    create role supabase_admin login superuser createdb createrole replication bypassrls password 'postgres';
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;
-- migrations/20230201083204_grant_auth_roles_to_postgres.sql; WITH ADMIN OPTION
-- on 16 and later (20250605172253_grant_with_admin_to_postgres_16_and_above.sql),
-- where CREATEROLE alone no longer lets a role alter or grant another.
do $$
begin
  if current_setting('server_version_num')::int >= 160000 then
    grant anon, authenticated, service_role to postgres with admin option;
  else
    grant anon, authenticated, service_role to postgres;
  end if;
end
$$;

-- The API roles inherit on hosted projects since supabase/postgres
-- migrations/db/migrations/20230529180330_alter_api_roles_for_inherit.sql.
alter role anon inherit;
alter role authenticated inherit;
alter role service_role inherit;

-- Hosted time limits, as supabase/postgres sets them:
--   anon           statement_timeout 3s   init-scripts/00000000000000-initial-schema.sql
--   authenticated  statement_timeout 8s   (same file)
--   authenticator  statement_timeout 8s   migrations/20221028101028_set_authenticator_timeout.sql
--   authenticator  lock_timeout      8s   migrations/20231130133139_set_lock_timeout_to_authenticator_role.sql
-- PostgREST logs in as authenticator, so its session starts with 8s/8s; it
-- then applies only the impersonated role's own settings per transaction
-- (local/gateway/rpc.ts). service_role has none, so it keeps authenticator's
-- 8s, and every role keeps the 8s lock_timeout.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
alter role authenticator set lock_timeout = '8s';

-- PostgREST exposes `public`; Supabase gives the API roles everything in it by
-- default, which is why our migrations revoke what they must not have.
-- init-scripts/00000000000000-initial-schema.sql runs these as postgres (so
-- for what postgres creates) and `for user supabase_admin`.
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public grant all on sequences to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public grant all on sequences to postgres, anon, authenticated, service_role;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
alter role authenticator set search_path to public, extensions;

-- The parts of GoTrue's schema that user-facing SQL depends on.
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255) unique,
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  raw_app_meta_data jsonb default '{}'::jsonb,
  raw_user_meta_data jsonb default '{}'::jsonb,
  is_anonymous boolean not null default false,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  deleted_at timestamptz
);

-- Columns GoTrue's sign-in reads and writes (supabase/auth migrations); added
-- separately so a cluster bootstrapped before them gains them.
alter table auth.users add column if not exists phone text unique default null;
alter table auth.users add column if not exists last_sign_in_at timestamptz;
alter table auth.users add column if not exists banned_until timestamptz;

-- Sessions and rotating refresh tokens, as GoTrue keeps them with its
-- refresh-token algorithm v1 (internal/models/sessions.go, refresh_token.go,
-- amr.go): one session per sign-in, one live token per session, each rotation
-- revoking the old token and naming it as the new one's parent.
create table if not exists auth.sessions (
  id uuid primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  refreshed_at timestamp without time zone,
  aal text not null default 'aal1',
  not_after timestamptz,
  user_agent text,
  ip inet
);
create index if not exists sessions_user_id_idx on auth.sessions (user_id);

create table if not exists auth.refresh_tokens (
  instance_id uuid,
  id bigserial primary key,
  token varchar(255) not null unique,
  user_id varchar(255),
  revoked boolean not null default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  parent varchar(255),
  session_id uuid references auth.sessions (id) on delete cascade
);
create index if not exists refresh_tokens_parent_idx on auth.refresh_tokens (parent);
create index if not exists refresh_tokens_session_id_revoked_idx
  on auth.refresh_tokens (session_id, revoked);

create table if not exists auth.mfa_amr_claims (
  id uuid primary key,
  session_id uuid not null references auth.sessions (id) on delete cascade,
  created_at timestamptz not null,
  updated_at timestamptz not null,
  authentication_method text not null,
  unique (session_id, authentication_method)
);

-- GoTrue connects as supabase_auth_admin, which owns the auth schema on a
-- hosted project; the local gateway's Auth (local/gateway/auth.ts) does the
-- same, so the API roles never need more than they have above.
do $$
begin
  if not exists (select from pg_roles where rolname = 'supabase_auth_admin') then
    create role supabase_auth_admin login noinherit password 'postgres';
  end if;
end
$$;
alter role supabase_auth_admin set search_path to auth;
grant usage on schema auth to supabase_auth_admin;
grant usage on schema extensions to supabase_auth_admin;
grant select, insert, update, delete on auth.users, auth.sessions, auth.refresh_tokens,
  auth.mfa_amr_claims to supabase_auth_admin;
grant usage on sequence auth.refresh_tokens_id_seq to supabase_auth_admin;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email'
  )::text
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt(), auth.email()
  to anon, authenticated, service_role;
grant select on auth.users to service_role;

-- What postgres may do in `auth` (migrations/20211115181400_update-auth-permissions.sql:
-- all on its tables, sequences and routines, which seed files inserting users rely on;
-- 20250421084701_revoke_admin_roles_from_postgres.sql takes back only Auth's own
-- migration table and CREATE in the schema, neither of which exists or is granted here).
grant usage on schema auth to postgres;
grant all on all tables in schema auth to postgres;
grant all on all sequences in schema auth to postgres;
grant all on all routines in schema auth to postgres;

-- pg_cron where it runs (the database cron.database_name names), with what
-- supabase/postgres grants postgres after creating it
-- (ansible/files/postgresql_extension_custom_scripts/pg_cron/after-create.sql):
-- its functions and run history, read-only `cron.job` (jobs change through
-- cron.schedule/unschedule only).
do $$
begin
  if exists (select from pg_available_extensions where name = 'pg_cron')
     and current_database() = coalesce(current_setting('cron.database_name', true), 'postgres') then
    create extension if not exists pg_cron with schema pg_catalog;
    grant usage on schema cron to postgres with grant option;
    grant all on all functions in schema cron to postgres with grant option;
    grant all privileges on all tables in schema cron to postgres with grant option;
    alter default privileges for user supabase_admin in schema cron
      grant all on sequences to postgres with grant option;
    alter default privileges for user supabase_admin in schema cron
      grant all on tables to postgres with grant option;
    alter default privileges for user supabase_admin in schema cron
      grant all on functions to postgres with grant option;
    revoke all on table cron.job from postgres;
    grant select on table cron.job to postgres with grant option;
  end if;
end
$$;

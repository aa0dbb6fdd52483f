-- What every hosted Supabase database has before a project's first migration,
-- modelled on the supabase/postgres init scripts and the supabase/auth schema
-- (written for this stack, not copied): API roles, their grants and default
-- privileges, the `extensions` and `auth` schemas, `auth.users` and the JWT
-- helpers that PostgREST-style requests rely on.
--
-- Only what this bundle touches is reproduced. Notably hosted `postgres` is
-- not a superuser; locally it is, so the lint/advisor gates matter.

create schema if not exists extensions;
create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;
create extension if not exists pg_stat_statements with schema extensions;

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
grant usage on schema public to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to postgres, anon, authenticated, service_role;
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

-- pgTAP lives in `extensions` as on a hosted project where tests enable it.
create extension if not exists pgtap with schema extensions;

-- Tables, row level security and table grants, checked the way PostgREST
-- would exercise them: by switching role and request.jwt.claims.
begin;
\ir reset_fleet.psql
select plan(16);

select has_table('public', 'devices', 'devices exists');
select has_table('public', 'backend_servers', 'backend_servers exists');
select has_table('public', 'device_assignment_events', 'device_assignment_events exists');
select has_table('public', 'assignment_settings', 'assignment_settings exists');

select is(
  (select count(*)::int from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relkind = 'r' and not c.relrowsecurity
      and c.relname in ('devices', 'backend_servers', 'device_assignment_events', 'assignment_settings')),
  0, 'row level security is on for every table');

select is(
  (select count(*)::int from information_schema.role_table_grants
    where grantee = 'anon' and table_schema = 'public'
      and table_name in ('devices', 'backend_servers', 'device_assignment_events', 'assignment_settings')),
  0, 'anon holds no privilege on any table');
select is(
  (select array_agg(privilege_type::text order by privilege_type) from information_schema.role_table_grants
    where grantee = 'authenticated' and table_schema = 'public'
      and table_name in ('devices', 'backend_servers', 'device_assignment_events', 'assignment_settings')),
  array['SELECT'], 'authenticated may only select, and only from devices');

select tests.create_user('owner-a'), tests.create_user('owner-b');
insert into public.devices (id, user_id, device_name) values
  ('d0000000-0000-4000-8000-00000000000a', tests.id('owner-a'), 'A phone'),
  ('d0000000-0000-4000-8000-00000000000b', tests.id('owner-b'), 'B phone');

select tests.as_user('owner-a');
select results_eq('select device_name from public.devices',
  array['A phone'], 'user A sees only their own device');
select is_empty($$select 1 from public.devices where id = 'd0000000-0000-4000-8000-00000000000b'$$,
  'user A cannot see user B''s device even by id');
select throws_ok($$update public.devices set device_name = 'x'$$, '42501', null,
  'a user cannot update devices directly');
select throws_ok($$select * from public.backend_servers$$, '42501', null,
  'a user cannot read backend_servers');
select throws_ok($$select * from public.device_assignment_events$$, '42501', null,
  'a user cannot read the audit trail');

select tests.as_user('owner-b');
select results_eq('select device_name from public.devices',
  array['B phone'], 'user B sees only their own device');

select tests.as_anon();
select throws_ok($$select * from public.devices$$, '42501', null, 'anon cannot read devices');

select tests.as_operator();
select ok((select count(*) from public.devices) >= 2, 'service_role reads every device');
select tests.as_system();

select policies_are('public', 'devices',
  array['owners read their devices', 'devices reach only their owner'],
  'devices has exactly the owner-read policy and the restrictive owner guard');

select * from finish();
rollback;

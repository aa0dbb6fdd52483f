-- Who may execute what: anon nothing, users the user API, service_role the
-- server and operator API; internals pinned and out of the exposed schema.
begin;
set local search_path to public, extensions;
select plan(12);

create temporary view api_functions as
select p.oid, p.proname, p.prosecdef, p.proconfig
from pg_proc p join pg_namespace n on n.oid = p.pronamespace
where n.nspname = 'public'
  and p.proname in ('get_device_qr', 'request_device_reassignment', 'server_heartbeat',
    'claim_devices', 'publish_device_qr', 'report_device_status', 'server_shutdown',
    'reassign_devices', 'run_assignment_maintenance', 'assignment_health',
    'device_session_write', 'device_session_read', 'request_pairing_code',
    'publish_device_pairing_code', 'set_backend_server_enabled', 'end_long_poll');

select is((select count(*)::int from api_functions), 16, 'the sixteen API functions exist in public');
select is(
  (select count(*)::int from api_functions where has_function_privilege('anon', oid, 'execute')),
  0, 'anon executes none of them');
select is(
  (select array_agg(proname::text order by proname) from api_functions
    where has_function_privilege('authenticated', oid, 'execute')),
  array['claim_devices', 'device_session_read', 'device_session_write', 'end_long_poll', 'get_device_qr',
        'publish_device_pairing_code', 'publish_device_qr', 'report_device_status',
        'request_device_reassignment', 'request_pairing_code', 'server_heartbeat', 'server_shutdown'],
  'authenticated executes the user API, and the server API for backend accounts (08 tests its guard)');
select is(
  (select array_agg(proname::text order by proname) from api_functions
    where has_function_privilege('service_role', oid, 'execute')),
  array['assignment_health', 'claim_devices', 'device_session_read', 'device_session_write',
        'publish_device_pairing_code', 'publish_device_qr', 'reassign_devices', 'report_device_status',
        'run_assignment_maintenance', 'server_heartbeat', 'server_shutdown', 'set_backend_server_enabled'],
  'service_role executes the server and operator API');
select is(
  (select count(*)::int from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and p.prosecdef),
  0, 'no security definer function lives in the exposed schema');
select is(
  (select count(*)::int from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname in ('public', 'device_assignment')
      and not exists (select from unnest(coalesce(p.proconfig, '{}')) c where c like 'search_path=%')),
  0, 'every function of ours pins search_path');
select is(
  (select count(*)::int from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'device_assignment' and has_function_privilege('anon', p.oid, 'execute')),
  0, 'anon executes nothing in device_assignment');
select ok(not has_schema_privilege('anon', 'device_assignment', 'usage'),
  'anon cannot even use the internal schema');
select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
     join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'device_assignment' and has_function_privilege('authenticated', p.oid, 'execute')),
  array['claim_devices', 'device_session_read', 'device_session_write', 'end_long_poll',
        'expire_pairing_requests', 'get_device_qr', 'pairing_phones_wanted',
        'publish_device_pairing_code', 'publish_device_qr', 'report_device_status',
        'request_device_reassignment', 'request_pairing_code', 'server_heartbeat', 'server_shutdown'],
  'authenticated executes only the user and server entry points of the internals');

-- The role helpers come after the catalog checks above, which they would be part of.
\ir roles.psql
select tests.as_anon();
select throws_ok($$select public.get_device_qr(gen_random_uuid())$$, '42501', null,
  'anon calling get_device_qr is refused');
select throws_ok($$select public.run_assignment_maintenance()$$, '42501', null,
  'anon calling maintenance is refused');
select tests.as_user('owner');
select throws_ok($$select public.reassign_devices('all_connecting')$$, '42501', null,
  'a user calling an operator RPC is refused');
select tests.as_system();

select * from finish();
rollback;

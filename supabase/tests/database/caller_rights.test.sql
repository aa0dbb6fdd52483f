-- Least privilege: backend accounts act only as their own server, operators
-- disable servers, the audit trail is append-only and names its caller, and
-- one user's long-polls and reassignments are bounded.
begin;
\ir reset_fleet.psql
select plan(73);

-- Two backend accounts, their owner-user, and a live, a second live and a dead server.
select tests.create_user('owner');
select tests.create_server('srv-a'), tests.create_server('srv-b'), tests.create_server('dead', false);
-- b pairing: pairing on srv-b, the device srv-a must not touch.
select tests.create_device('b pairing', 'owner', 'connecting', 'srv-b', 3);
-- a pairing, a linked: pairing and linked on srv-a, moved when srv-a is disabled.
select tests.create_device('a pairing', 'owner', 'connecting', 'srv-a', 5);
select tests.create_device('a linked', 'owner', 'connected', 'srv-a', 2);
-- restless: the device its owner keeps reassigning.
select tests.create_device('restless', 'owner', 'connecting', 'srv-b', 1);

-- Backend accounts -------------------------------------------------------------------------
select tests.as_backend('srv-a');
select is(public.server_heartbeat('srv-a', 1, 10, '{}') ->> 'server_id',
  tests.id('srv-a')::text, 'a backend account heartbeats under its own name');
select throws_ok($$select public.server_heartbeat('srv-b', 0, 1, '{}')$$, 'PT403', 'forbidden',
  'a backend account cannot heartbeat under another server''s name');
select throws_ok($$select public.server_heartbeat('sinkhole', 0, null, '{}')$$, 'PT403', 'forbidden',
  'a backend account cannot register a server of its own invention');
select throws_ok($$select * from public.claim_devices(tests.id('srv-b'), 10)$$,
  'PT403', 'forbidden', 'claim_devices refuses another server''s p_server_id');
select throws_ok($$select public.publish_device_qr(tests.id('b pairing'),
    tests.id('srv-b'), 3, 'evil-qr', now() + interval '1 minute')$$,
  'PT403', 'forbidden', 'publish_device_qr refuses another server''s p_server_id');
select throws_ok($$select public.report_device_status(tests.id('b pairing'),
    tests.id('srv-b'), 3, 'error', 'x')$$,
  'PT403', 'forbidden', 'report_device_status refuses another server''s p_server_id');
select throws_ok($$select public.device_session_write(tests.id('b pairing'),
    tests.id('srv-b'), 3, '[{"type":"creds","id":"creds","value":"evil"}]')$$,
  'PT403', 'forbidden', 'device_session_write refuses another server''s p_server_id');
select throws_ok($$select public.device_session_read(tests.id('b pairing'),
    tests.id('srv-b'), 3, 'creds', null)$$,
  'PT403', 'forbidden', 'device_session_read refuses another server''s p_server_id');
select throws_ok($$select public.server_shutdown(tests.id('srv-b'))$$,
  'PT403', 'forbidden', 'server_shutdown refuses another server''s p_server_id');
select throws_ok($$select * from public.claim_devices(tests.id('nowhere'), 10)$$,
  'PT403', 'forbidden', 'an unknown p_server_id is forbidden too, not a hint that it is free');
select lives_ok($$select * from public.claim_devices(tests.id('srv-a'), 10)$$,
  'a backend account claims as its own server');
select tests.as_backend('srv-b');
select is(public.publish_device_qr(tests.id('b pairing'),
    tests.id('srv-b'), 3, 'qr-b', now() + interval '1 minute') ->> 'accepted', 'true',
  'the device''s own server publishes its QR');

-- Who else is turned away.
select tests.as_user('owner');
select throws_ok($$select public.server_heartbeat('srv-a', 0, null, '{}')$$, 'PT403', 'forbidden',
  'a signed-in user without a backend claim cannot heartbeat');
select throws_ok($$select * from public.claim_devices(tests.id('srv-a'), 10)$$,
  'PT403', 'forbidden', 'a signed-in user cannot claim devices');
select tests.as_forger('owner', 'srv-a');
select throws_ok($$select public.server_heartbeat('srv-a', 0, null, '{}')$$, 'PT403', 'forbidden',
  'a server name in user_metadata (which users write) makes no backend account');
select throws_ok($$select public.set_backend_server_enabled('srv-b', false)$$, '42501', null,
  'a user cannot disable a server');
select tests.as_backend('srv-a');
select throws_ok($$select public.set_backend_server_enabled('srv-b', false)$$, '42501', null,
  'a backend account cannot disable a server');
select tests.as_anon();
select throws_ok($$select public.server_heartbeat('srv-a', 0, null, '{}')$$, '42501', null,
  'anon cannot call the server API');
select tests.as_system();

-- The caller recorded in the audit trail --------------------------------------------------------
update public.devices set assigned_server_id = null where id = tests.id('restless');
select tests.as_backend('srv-a');
select is((select count(*)::int from public.claim_devices(tests.id('srv-a'), 10) where claimed),
  1, 'srv-a claims the unassigned device');
select tests.as_system();
select is((select caller from public.device_assignment_events
            where device_id = tests.id('restless') and reason = 'claimed'),
  'server:srv-a', 'a claim is recorded with the backend account that made it');

-- A reassignment budget the user cannot reset -----------------------------------------------------
update public.assignment_settings set reassign_cooldown = '0 seconds';
select tests.as_user('owner');
do $$
begin
  for i in 1..10 loop
    perform public.request_device_reassignment(tests.id('restless'));
  end loop;
end
$$;
select is((select reassign_count from public.devices where id = tests.id('restless')), 0,
  'each request resets reassign_count, so it cannot be the budget');
select throws_ok($$select public.request_device_reassignment(tests.id('restless'))$$,
  'PT429', 'reassignment_budget_exhausted', 'the 11th reassignment within the hour is refused');
select tests.as_system();
select is((select count(*)::int from public.device_assignment_events
            where device_id = tests.id('restless') and reason = 'user_request'
              and caller = 'user:' || tests.id('owner')),
  10, 'each reassignment is recorded with the user who asked');

-- At most long_polls_per_user concurrent long-polls -------------------------------------------------
select tests.as_user('owner');
select lives_ok($$
  select public.get_device_qr(tests.id('b pairing'), w)
  from (values ('e0000000-0000-4000-8000-000000000001'::uuid), ('e0000000-0000-4000-8000-000000000002'),
               ('e0000000-0000-4000-8000-000000000003'), ('e0000000-0000-4000-8000-000000000004'),
               ('e0000000-0000-4000-8000-000000000005')) v(w)$$,
  'five concurrent long-polls are allowed');
select throws_ok($$select public.get_device_qr(tests.id('b pairing'),
    'e0000000-0000-4000-8000-000000000006')$$,
  'PT429', 'too_many_long_polls', 'a sixth concurrent long-poll is refused');
select lives_ok($$select public.get_device_qr(tests.id('b pairing'),
    'e0000000-0000-4000-8000-000000000003')$$,
  'a long-poll that holds a lease keeps re-checking');
select lives_ok($$select public.get_device_qr(tests.id('b pairing'))$$,
  'a request that does not wait holds no lease');
select public.end_long_poll('e0000000-0000-4000-8000-000000000002');
select lives_ok($$select public.get_device_qr(tests.id('b pairing'),
    'e0000000-0000-4000-8000-000000000007')$$,
  'a long-poll that ended frees its slot at once');
select tests.as_system();
update device_assignment.long_poll_leases set expires_at = now() - interval '1 second'
 where wait_id = 'e0000000-0000-4000-8000-000000000001';
select tests.as_user('owner');
select lives_ok($$select public.get_device_qr(tests.id('b pairing'),
    'e0000000-0000-4000-8000-000000000006')$$,
  'a long-poll that stopped re-checking frees its slot when its lease lapses');
select tests.as_system();
select is((select count(*)::int from device_assignment.long_poll_leases
            where user_id = tests.id('owner')),
  5, 'the user holds five leases');

-- Users get an error code, operators the text ---------------------------------------------------------
select tests.as_backend('srv-b');
select is(public.report_device_status(tests.id('b pairing'),
    tests.id('srv-b'), 3, 'qr_timeout', 'socket to 10.0.0.7:5222 reset') ->> 'status',
  'qr_timeout', 'the server reports a timeout with its own text');
select tests.as_user('owner');
select is(public.get_device_qr(tests.id('b pairing')) ->> 'last_error_code', 'qr_timeout',
  'the user gets the error''s code');
select unalike(public.get_device_qr(tests.id('b pairing'))::text, '%10.0.0.7%',
  'and never the server''s text');
select tests.as_system();
select ok(public.assignment_health() -> 'device_errors' @> '[{"last_error": "socket to 10.0.0.7:5222 reset"}]',
  'operators read the text in assignment_health');
select ok(public.assignment_health() -> 'device_errors' @> jsonb_build_array(jsonb_build_object(
    'device_id', tests.id('b pairing'), 'last_error_code', 'qr_timeout',
    'reported_by_server', tests.id('srv-b'))),
  'with its code and the server that reported it');

-- The table endpoint (supabase.from('devices').select(...)) reads what RLS lets the owner see.
select tests.as_user('owner');
select is((select last_error from public.devices where id = tests.id('b pairing')),
  'qr_timeout', 'the owner reading the devices table finds the code in last_error');
select is((select count(*)::int from public.devices d where d::text like '%10.0.0.7%'), 0,
  'and the server''s text in no column of any row');
select throws_ok($$select * from device_assignment.device_error_text$$, '42501', null,
  'the text''s own table is closed to users');
select tests.as_operator();
select throws_ok($$select * from device_assignment.device_error_text$$, '42501', null,
  'and to the secret key outside assignment_health');
-- A legacy backend writes the column itself, with the secret key.
update public.devices set last_error = 'ECONNREFUSED 10.0.0.8:443'
 where id = tests.id('b pairing');
select tests.as_system();
select is((select last_error from public.devices where id = tests.id('b pairing')),
  'qr_timeout', 'text written straight into the table is stored as its code');
select ok(public.assignment_health() -> 'device_errors' @> '[{"last_error": "ECONNREFUSED 10.0.0.8:443"}]',
  'and its text reaches operators');

select tests.as_backend('srv-b');
select is(public.report_device_status(tests.id('b pairing'),
    tests.id('srv-b'), 3, 'connecting', null) ->> 'status',
  'connecting', 'the server reports the device pairing again');
select tests.as_system();
select is((select count(*)::int from device_assignment.device_error_text
            where device_id = tests.id('b pairing')), 0,
  'clearing the error clears its text');

-- Disabling a server ---------------------------------------------------------------------------------
select tests.as_operator();
select is(public.set_backend_server_enabled('srv-a', false) - 'server_id',
  '{"server": "srv-a", "enabled": false, "devices_moved": 3}'::jsonb,
  'an operator disables srv-a, and its three devices move at once');
select tests.as_system();
select is((select count(*)::int from public.devices where assigned_server_id = tests.id('srv-a')),
  0, 'no device is left on the disabled server');
select is((select array_agg(distinct caller) from public.device_assignment_events
            where from_server_id = tests.id('srv-a')
              and reason in ('server_inactive', 'session_failover')),
  array['operator'], 'the moves are recorded with the operator');
select is((select status from public.devices where id = tests.id('a linked')),
  'connecting', 'its linked device without a stored session fails over to pairing');

select tests.as_backend('srv-a');
select throws_ok($$select public.server_heartbeat('srv-a', 0, 10, '{}')$$, 'PT403', 'server_disabled',
  'a disabled server cannot heartbeat itself back');
select throws_ok($$select * from public.claim_devices(tests.id('srv-a'), 10)$$,
  'PT409', 'server_not_live', 'a disabled server''s claim is server_not_live');
select throws_ok($$select public.report_device_status(tests.id('a pairing'),
    tests.id('srv-a'), 5, 'error', 'late')$$,
  'PT409', 'server_not_live', 'a disabled server''s late report is server_not_live');
select throws_ok($$select public.device_session_read(tests.id('a linked'),
    tests.id('srv-a'), 2, 'creds', null)$$,
  'PT409', 'server_not_live', 'a disabled server''s session read is server_not_live');
select tests.as_system();

update public.backend_servers set is_active = true, last_health_ping = now() where server_name = 'srv-a';
select ok(not exists (select from device_assignment.live_servers where server_name = 'srv-a'),
  'a disabled server is never live, whatever its heartbeat columns say');
select is(public.set_backend_server_enabled('srv-new', false) - 'server_id',
  '{"server": "srv-new", "enabled": false, "devices_moved": 0}'::jsonb,
  'an operator may disable a name before its server ever starts');
select is(public.set_backend_server_enabled('srv-a', true) ->> 'enabled', 'true', 'and enable a server again');
select tests.as_backend('srv-a');
select lives_ok($$select public.server_heartbeat('srv-a', 0, 10, '{}')$$,
  'an enabled server heartbeats again');
select tests.as_system();

-- Maintenance is `system` -----------------------------------------------------------------------------
update public.devices set assigned_server_id = tests.id('dead'), reassign_count = 0,
                          last_reassigned_at = null
 where id = tests.id('a pairing');
select public.run_assignment_maintenance();
select is((select caller from public.device_assignment_events
            where device_id = tests.id('a pairing')
              and from_server_id = tests.id('dead')),
  'system', 'a heal by pg_cron or a database session is recorded as system');

-- The audit trail is append-only ----------------------------------------------------------------------
select tests.as_operator();
select throws_ok($$delete from public.device_assignment_events$$, '42501', null,
  'service_role cannot delete audit rows');
select throws_ok($$update public.device_assignment_events set actor = 'nobody'$$, '42501', null,
  'service_role cannot rewrite audit rows');
select throws_ok($$insert into public.device_assignment_events (device_id, epoch, reason, actor)
    values (gen_random_uuid(), 1, 'operator', 'forged')$$, '42501', null,
  'service_role cannot forge audit rows');
select throws_ok($$truncate public.device_assignment_events$$, '42501', null,
  'service_role cannot truncate the audit trail');
select tests.as_system();
select throws_ok($$delete from public.device_assignment_events$$, 'PT403', 'audit_append_only',
  'even the table''s owner cannot delete audit rows outside the retention purge');
select throws_ok($$update public.device_assignment_events set actor = 'nobody'$$, 'PT403', 'audit_append_only',
  'even the table''s owner cannot rewrite audit rows');

-- What the secret key could still do to the trail (second review) ---------------------------------
-- The retention purge is the one way rows leave, so whoever sets event_retention
-- decides what survives: with the secret key (service_role may update
-- assignment_settings through the Data API) a compromised operator credential
-- could set it to a second and let the next purge erase the trail.
select tests.as_operator();
select throws_ok($$update public.assignment_settings set event_retention = '1 second'$$, '23514', null,
  'service_role cannot shorten event_retention so that the next purge erases recent history');
select throws_ok($$update public.assignment_settings set event_retention = '-1 year'$$, '23514', null,
  'nor make it negative, which would purge every row');
select throws_ok($$update public.assignment_settings set event_retention = '6 days 23:59:59'$$, '23514', null,
  'the floor is seven days');
select lives_ok($$update public.assignment_settings set event_retention = '90 days'$$,
  'an operator may still keep history longer');
-- The trail's id is an identity primary key: rewinding its sequence would make
-- every later audit insert, and with it every device move, fail on a duplicate.
select throws_ok($$select setval('public.device_assignment_events_id_seq', 1)$$, '42501', null,
  'service_role cannot rewind the audit trail''s id sequence');
select throws_ok($$select nextval('public.device_assignment_events_id_seq')$$, '42501', null,
  'nor draw ids from it: only the one writer (security definer) numbers audit rows');
select tests.as_system();
select is((select count(*)::int from public.assignment_settings where event_retention < interval '7 days'), 0,
  'no database keeps a retention under the floor');

-- Upgrade: text stored before the split -------------------------------------------------------------
-- A row as 20261201190000_private_error_text.sql finds it on an existing
-- project: planted with the trigger off, then split by the migration's own step.
alter table public.devices disable trigger devices_keep_error_text_private;
insert into public.devices (id, user_id, device_name, status, last_error) values
  (tests.id('old error'), tests.id('owner'), 'old error',
   'disconnected', 'Stream Errored (conflict) from 10.0.0.9');
alter table public.devices enable trigger devices_keep_error_text_private;
select is(device_assignment.hide_error_texts(), 1, 'the upgrade finds the one row that holds text');
select is((select last_error from public.devices where id = tests.id('old error')),
  'disconnected', 'and leaves its code in last_error');
select is((select error_text from device_assignment.device_error_text
            where device_id = tests.id('old error')),
  'Stream Errored (conflict) from 10.0.0.9', 'with its text in the private table');
select is(device_assignment.hide_error_texts(), 0, 'run again, it finds nothing');

select * from finish();
rollback;

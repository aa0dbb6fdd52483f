-- The session store and session failover: fenced reads and writes, who may
-- touch the store, `reconnecting`, `logged_out`, shutdown handover, one writer.
begin;
\ir reset_fleet.psql
select plan(45);

select tests.create_user('owner-a');
insert into public.backend_servers (id, server_name, last_health_ping) values
  ('5e000000-0000-4000-8000-00000000000a', 'server-a', now()),
  ('5e000000-0000-4000-8000-00000000000b', 'server-b', now() - interval '1 hour');

-- Device 1 is linked on server-a with a stored session; device 2 is linked on
-- server-a without one (a backend that never saved it); device 3 is pairing.
insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch,
                            reassign_count, last_reassigned_at)
values
  ('d0000000-0000-4000-8000-000000000001', tests.id('owner-a'), 'linked',
   'connected', '5e000000-0000-4000-8000-00000000000a', 7, 3, now() - interval '1 hour'),
  ('d0000000-0000-4000-8000-000000000002', tests.id('owner-a'), 'no session',
   'connected', '5e000000-0000-4000-8000-00000000000a', 4, 0, null),
  ('d0000000-0000-4000-8000-000000000003', tests.id('owner-a'), 'pairing',
   'connecting', '5e000000-0000-4000-8000-00000000000a', 2, 0, null);

-- Who may touch the store --------------------------------------------------------------
select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role']) r
    where has_function_privilege(r, 'public.device_session_write(uuid, uuid, bigint, jsonb)', 'execute')
       or has_function_privilege(r, 'public.device_session_read(uuid, uuid, bigint, text, text[])', 'execute')),
  array['authenticated', 'service_role'],
  'anon never executes the session store''s functions (users are turned away by the guard, below)');
select is(
  (select count(*)::int from unnest(array['anon', 'authenticated', 'service_role']) r
    where has_table_privilege(r, 'device_assignment.device_sessions', 'select, insert, update, delete')),
  0, 'nobody reads or writes the session table directly');
select ok((select relrowsecurity from pg_class where oid = 'device_assignment.device_sessions'::regclass),
  'the session table has row level security on');
select tests.as_anon();
select throws_ok($$select public.device_session_read('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, 'creds', null)$$, '42501', null, 'anon cannot read a session');
select tests.as_user('owner-a');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, '[]')$$, 'PT403', 'forbidden',
  'the device''s own user cannot write its session');
select throws_ok($$select * from device_assignment.device_sessions$$, '42501', null,
  'the device''s own user cannot select the session table');
-- A user's claims end with their role: the server API below runs as a database session.
select tests.as_system();

-- Fenced writes and reads -------------------------------------------------------------------
select is(public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7,
  '[{"type":"creds","id":"creds","value":"SECRET-creds-v1"},
    {"type":"pre-key","id":"1","value":"SECRET-pk1"},
    {"type":"pre-key","id":"2","value":"SECRET-pk2"},
    {"type":"pre-key","id":"2","value":"SECRET-pk2-last"}]') - 'device_id',
  '{"accepted": true, "written": 3, "deleted": 0}'::jsonb,
  'the owner writes a batch at its epoch; a (type, id) given twice is written once');
select is(public.device_session_read('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, 'pre-key', array['1', '2', '9']),
  '{"1": "SECRET-pk1", "2": "SECRET-pk2-last"}'::jsonb,
  'a read answers the entries that exist, the last write of a batch winning');
select is(public.device_session_read('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, 'pre-key', null) ->> '1', 'SECRET-pk1',
  'null ids read every entry of the type');
select is(public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, '[{"type":"pre-key","id":"1","value":null}]') ->> 'deleted',
  '1', 'a null value deletes its entry');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 7, '[{"type":"creds","id":"creds","value":"evil"}]')$$,
  'PT409', 'fenced', 'another server''s write is fenced');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 6, '[{"type":"creds","id":"creds","value":"evil"}]')$$,
  'PT409', 'fenced', 'a write with a stale epoch is fenced');
select throws_ok($$select public.device_session_read('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 7, 'creds', null)$$,
  'PT409', 'fenced', 'another server''s read is fenced');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, '{"type":"creds"}')$$,
  'PT400', 'invalid_argument', 'entries that are not an array are refused');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, '[{"type":"creds","id":"creds"}]')$$,
  'PT400', 'invalid_argument', 'an entry without a value is refused');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, '[{"type":"","id":"x","value":"v"}]')$$,
  'PT400', 'invalid_argument', 'an empty type is refused');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, '[{"type":"creds","id":"creds","value":{"a":1}}]')$$,
  'PT400', 'invalid_argument', 'a value that is not a string is refused');
select throws_ok($$select public.device_session_read('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, null, null)$$,
  'PT400', 'invalid_argument', 'a read without a type is refused');
select is((select value from device_assignment.device_sessions
            where device_id = 'd0000000-0000-4000-8000-000000000001' and type = 'creds'),
  'SECRET-creds-v1', 'no refused write changed the session');

-- Failover: server-a falls silent, server-b is live ---------------------------------------------
update public.backend_servers set last_health_ping = now() - interval '1 hour'
 where server_name = 'server-a';
update public.backend_servers set last_health_ping = now() where server_name = 'server-b';
select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') ->> 'status', 'reconnecting',
  'get-device-qr never answers connected for a session nobody holds: it hands it over, reconnecting');
select tests.as_system();
select ok((select status = 'reconnecting' and assigned_server_id = '5e000000-0000-4000-8000-00000000000b'
                  and assignment_epoch = 8
             from public.devices where id = 'd0000000-0000-4000-8000-000000000001'),
  'the linked device is reconnecting on the live server under a new epoch');
select ok((select reassign_count = 3 and last_reassigned_at < now() - interval '59 minutes'
             from public.devices where id = 'd0000000-0000-4000-8000-000000000001'),
  'a failover spends none of the pairing budget and starts no cooldown');
select is((select reason from public.device_assignment_events
            where device_id = 'd0000000-0000-4000-8000-000000000001' order by id desc limit 1),
  'session_failover', 'the handover is audited as session_failover');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 7, '[{"type":"creds","id":"creds","value":"late"}]')$$,
  'PT409', 'fenced', 'the old server''s late write after the handover is refused');
select is(
  (select array_agg(device_id::text || ':' || status || ':' || resume order by device_id)
     from public.claim_devices('5e000000-0000-4000-8000-00000000000b', 10)),
  array['d0000000-0000-4000-8000-000000000001:reconnecting:true',
        'd0000000-0000-4000-8000-000000000002:connecting:false',
        'd0000000-0000-4000-8000-000000000003:connecting:false'],
  'the live server''s claim returns the session to resume (resume, reconnecting), and takes the rest');
select is((select status from public.devices where id = 'd0000000-0000-4000-8000-000000000002'), 'connecting',
  'a linked device without a stored session goes straight to pairing');
select is(public.device_session_read('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 8, 'creds', array['creds']),
  '{"creds": "SECRET-creds-v1"}'::jsonb, 'the new owner reads the session the old one stored');
select is(public.report_device_status('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 8, 'connected') ->> 'status', 'connected',
  'the resuming server reports connected');
select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') ->> 'status', 'connected',
  'the owner sees the device connected again, no QR');
select tests.as_system();

-- A backend that cannot resume pairs afresh: its QR ends the resume and the session.
update public.devices set status = 'reconnecting' where id = 'd0000000-0000-4000-8000-000000000001';
select is(public.publish_device_qr('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 8, '2@ref,a,b,c', now() + interval '1 minute') ->> 'accepted',
  'true', 'a QR for a device being resumed is taken');
select ok((select status = 'connecting' and not exists (
             select from device_assignment.device_sessions where device_id = d.id)
             from public.devices d where id = 'd0000000-0000-4000-8000-000000000001'),
  'the device is pairing again and the abandoned session is gone');

-- logged_out ----------------------------------------------------------------------------------
select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 8, '[{"type":"creds","id":"creds","value":"SECRET-v2"}]');
select is(public.report_device_status('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 8, 'logged_out') ->> 'status', 'disconnected',
  'logged_out is accepted and the device becomes disconnected');
select ok((select last_error = 'logged_out' from public.devices
            where id = 'd0000000-0000-4000-8000-000000000001'), 'its last_error is logged_out');
select is((select count(*)::int from device_assignment.device_sessions
            where device_id = 'd0000000-0000-4000-8000-000000000001'),
  0, 'a logged-out device''s session is deleted');
select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 8, '[{"type":"creds","id":"creds","value":"again"}]')$$,
  'PT409', 'fenced', 'a write racing the logout cannot bring the session back');

-- Graceful shutdown hands a linked device over at once ---------------------------------------------
update public.backend_servers set last_health_ping = now() where server_name = 'server-a';
select public.report_device_status('d0000000-0000-4000-8000-000000000003',
  '5e000000-0000-4000-8000-00000000000b', (select assignment_epoch from public.devices
    where id = 'd0000000-0000-4000-8000-000000000003'), 'connected');
select public.device_session_write('d0000000-0000-4000-8000-000000000003',
  '5e000000-0000-4000-8000-00000000000b', (select assignment_epoch from public.devices
    where id = 'd0000000-0000-4000-8000-000000000003'),
  '[{"type":"creds","id":"creds","value":"SECRET-3"}]');
select is(public.server_shutdown('5e000000-0000-4000-8000-00000000000b') ->> 'sessions_handed_over', '1',
  'shutdown hands over its linked device');
select ok((select status = 'reconnecting' and assigned_server_id = '5e000000-0000-4000-8000-00000000000a'
             from public.devices where id = 'd0000000-0000-4000-8000-000000000003'),
  'it is reconnecting on the other live server at once');

-- No live server: the session waits, unassigned, still reconnecting --------------------------------
update public.backend_servers set last_health_ping = now() - interval '1 hour';
select is((public.run_assignment_maintenance() ->> 'left_unassigned')::int, 1,
  'with no live server the session is released from its dead server');
select ok((select status = 'reconnecting' and assigned_server_id is null
             from public.devices where id = 'd0000000-0000-4000-8000-000000000003'),
  'and waits, reconnecting, for the next server');
select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000003') - 'device_id' - 'epoch'
            - 'last_error_code' - 'server' - 'qr',
  '{"status": "reconnecting", "device_status": "reconnecting", "reason": "no_active_servers",
    "reassigned": false, "retry_after_ms": 5000, "pairing_code": null, "incident": null}'::jsonb,
  'get-device-qr says why, and when to ask again');
select tests.as_system();

-- The audit trail and deletion -------------------------------------------------------------------
select is((select count(*)::int from public.device_assignment_events e where to_jsonb(e)::text like '%SECRET%'),
  0, 'no audit row holds session data');
select is((select count(*)::int from public.device_assignment_events
            where reason = 'session_failover'), 4,
  'every handover is audited (by get-device-qr, a claim, a shutdown, a release)');
delete from public.devices where id = 'd0000000-0000-4000-8000-000000000003';
select is((select count(*)::int from device_assignment.device_sessions
            where device_id = 'd0000000-0000-4000-8000-000000000003'),
  0, 'deleting a device deletes its session');

-- One writer ----------------------------------------------------------------------------------------
select is(
  (select array_agg(p.proname::text) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname in ('public', 'device_assignment') and p.prosrc ~ 'assignment_epoch\s*='),
  array['move_devices'], 'only the one writer sets a device''s epoch');
select is(
  (select array_agg(p.proname::text) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname in ('public', 'device_assignment')
      and p.prosrc ~* 'insert\s+into\s+public\.device_assignment_events'),
  array['move_devices'], 'only the one writer writes the audit trail');

select * from finish();
rollback;

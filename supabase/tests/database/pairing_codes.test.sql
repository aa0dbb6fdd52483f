-- Pairing codes: who may ask and publish, the number's validation, cooldown
-- and hourly cap, fencing, expiry, carried over a move, cleared on link.
begin;
\ir reset_fleet.psql
update public.assignment_settings
   set pairing_cooldown = '60 seconds', pairing_requests_per_hour = 10,
       pairing_request_ttl = '10 minutes';
select plan(51);

select tests.create_user('owner-a'), tests.create_user('owner-b');
insert into public.backend_servers (id, server_name, last_health_ping) values
  ('5e000000-0000-4000-8000-00000000000a', 'server-a', now()),
  ('5e000000-0000-4000-8000-00000000000b', 'server-b', now());

-- 1: pairing on server-a; 2: idle, unassigned; 3: linked; 4, 5: pairing, for
-- the cap; 9: another user's device.
insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch,
                            assigned_at, connecting_since, qr_code, qr_updated_at, qr_expires_at)
values
  ('d0000000-0000-4000-8000-000000000001', tests.id('owner-a'), 'pairing',
   'connecting', '5e000000-0000-4000-8000-00000000000a', 3, now(), now(),
   'qr-1', now(), now() + interval '20 seconds'),
  ('d0000000-0000-4000-8000-000000000002', tests.id('owner-a'), 'idle',
   'disconnected', null, 0, null, null, null, null, null),
  ('d0000000-0000-4000-8000-000000000003', tests.id('owner-a'), 'linked',
   'connected', '5e000000-0000-4000-8000-00000000000a', 5, now(), null, null, null, null),
  ('d0000000-0000-4000-8000-000000000004', tests.id('owner-a'), 'cap 1',
   'connecting', '5e000000-0000-4000-8000-00000000000b', 1, now(), now(), null, null, null),
  ('d0000000-0000-4000-8000-000000000005', tests.id('owner-a'), 'cap 2',
   'connecting', '5e000000-0000-4000-8000-00000000000b', 1, now(), now(), null, null, null),
  ('d0000000-0000-4000-8000-000000000009', tests.id('owner-b'), 'B phone',
   'connecting', '5e000000-0000-4000-8000-00000000000a', 1, now(), now(), null, null, null);

-- Grants ----------------------------------------------------------------------------------
select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role']) r
    where has_function_privilege(r, 'public.request_pairing_code(uuid, text)', 'execute')),
  array['authenticated'], 'only users ask for pairing codes');
select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role']) r
    where has_function_privilege(r,
      'public.publish_device_pairing_code(uuid, uuid, bigint, text, timestamptz)', 'execute')
       or has_function_privilege(r, 'device_assignment.pairing_phones_wanted(uuid, uuid[])', 'execute')),
  array['authenticated', 'service_role'],
  'the secret key and backend accounts (authenticated, guarded below) publish codes and read numbers');
select is(
  (select count(*)::int from unnest(array['anon', 'authenticated', 'service_role']) r,
     unnest(array['device_assignment.pairing_requests', 'device_assignment.pairing_request_log']) t
    where has_table_privilege(r, t, 'select, insert, update, delete')),
  0, 'nobody reads or writes the request tables directly');
select ok((select bool_and(relrowsecurity) from pg_class
            where oid in ('device_assignment.pairing_requests'::regclass,
                          'device_assignment.pairing_request_log'::regclass)),
  'both request tables have row level security on');

-- Asking ----------------------------------------------------------------------------------
select tests.as_anon();
select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000001', '+14155550123')$$,
  '42501', null, 'anon cannot ask for a code');
select tests.as_system(); -- the server side: no user claims left over

select tests.as_user('owner-a');

select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000009', '+14155550123')$$,
  'PT404', 'not_found', 'another user''s device is answered like a missing one');
select throws_ok($$select public.request_pairing_code(gen_random_uuid(), '+14155550123')$$,
  'PT404', 'not_found', 'a missing device is not_found');
select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000001', '12345')$$,
  'PT400', 'invalid_argument', 'a number too short for E.164 is invalid');
select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000001', '+0155550123')$$,
  'PT400', 'invalid_argument', 'a number starting with 0 is invalid');
select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000001', '+1 415 555 0123')$$,
  'PT400', 'invalid_argument', 'only digits are stored: formatting is the caller''s to remove');
select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000003', '+14155550123')$$,
  'PT409', 'already_connected', 'a linked device needs no code');

select is(public.request_pairing_code('d0000000-0000-4000-8000-000000000001', '+14155550123')
            - array['requested_at', 'expires_at'],
  '{"device_id": "d0000000-0000-4000-8000-000000000001", "epoch": 3}'::jsonb,
  'the owner asks for a code for a pairing device; it stays on its server at its epoch');
select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000001', '+14155550123')$$,
  'PT429', 'cooldown', 'a second request within 60 s is refused with cooldown');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') -> 'pairing_code', 'null'::jsonb,
  'get_device_qr has no code until the server publishes one');

select is(public.request_pairing_code('d0000000-0000-4000-8000-000000000002', '447700900123') ->> 'epoch', '1',
  'an idle device starts pairing: it is moved (epoch bumped) to a live server');
select tests.as_system(); -- the server side: no user claims left over
select is((select status from public.devices where id = 'd0000000-0000-4000-8000-000000000002'), 'connecting',
  'the idle device is now connecting');
select is((select count(*)::int from public.device_assignment_events
            where device_id = 'd0000000-0000-4000-8000-000000000002' and reason = 'user_request'),
  1, 'its move went through the one writer, audited as a user request');
select is(
  (select count(*)::int from public.device_assignment_events e
    where to_jsonb(e)::text like '%4155550123%' or to_jsonb(e)::text like '%7700900123%'),
  0, 'no number reaches the audit trail');
select is(
  (select array_agg(phone order by phone) from device_assignment.pairing_requests),
  array['14155550123', '447700900123'], 'only E.164 digits are stored');

-- The hourly cap (lowered to 3: two requests are made already).
update public.assignment_settings set pairing_requests_per_hour = 3;
select tests.as_user('owner-a');
select lives_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000004', '+14155550124')$$,
  'a third request within the hour is accepted');
select throws_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000005', '+14155550125')$$,
  'PT429', 'rate_limited', 'a fourth, on yet another device, is over the hourly cap');
select tests.as_system(); -- the server side: no user claims left over
update public.assignment_settings set pairing_requests_per_hour = 10;

-- The server's side: claim, publish, fencing ---------------------------------------------------
select is(
  (select pairing_phone from public.claim_devices('5e000000-0000-4000-8000-00000000000a')
    where device_id = 'd0000000-0000-4000-8000-000000000001'),
  '14155550123', 'the device''s server finds the number in its claim');
select is(
  (select pairing_phone from public.claim_devices('5e000000-0000-4000-8000-00000000000b')
    where device_id = 'd0000000-0000-4000-8000-000000000005'),
  null, 'a device without a request has no number');
select is((select phone from device_assignment.pairing_phones_wanted('5e000000-0000-4000-8000-00000000000b',
  array['d0000000-0000-4000-8000-000000000001']::uuid[])), null, 'another server never gets the number');

-- A backend account is `authenticated` too: only the device's own server's account reads the number.
select tests.as_user('owner-a');
select is((select phone from device_assignment.pairing_phones_wanted('5e000000-0000-4000-8000-00000000000a',
  array['d0000000-0000-4000-8000-000000000001']::uuid[])), null, 'a signed-in user never reads a number, even their own');
select tests.as_backend('server-b');
select is((select phone from device_assignment.pairing_phones_wanted('5e000000-0000-4000-8000-00000000000a',
  array['d0000000-0000-4000-8000-000000000001']::uuid[])), null, 'another server''s account never reads it');
select tests.as_backend('server-a');
select is((select phone from device_assignment.pairing_phones_wanted('5e000000-0000-4000-8000-00000000000a',
  array['d0000000-0000-4000-8000-000000000001']::uuid[])), '14155550123', 'the holding server''s account reads it');
select tests.as_system(); -- the server side: no user claims left over

select throws_ok($$select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 2, 'ABCD1234', now() + interval '3 minutes')$$,
  'PT409', 'fenced', 'a code from an old epoch is fenced');
select throws_ok($$select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 3, 'ABCD1234', now() + interval '3 minutes')$$,
  'PT409', 'fenced', 'a code from another server is fenced');
select throws_ok($$select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 3, 'AB CD;', now() + interval '3 minutes')$$,
  'PT400', 'invalid_argument', 'a code with other characters is invalid');
select throws_ok($$select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 3, 'ABCD1234', now() - interval '1 second')$$,
  'PT400', 'invalid_argument', 'a code already expired is invalid');
select is(public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 3, 'ABCD1234', now() + interval '3 minutes') ->> 'accepted',
  'true', 'the owner publishes a code at its epoch');
select is(
  (select pairing_phone from public.claim_devices('5e000000-0000-4000-8000-00000000000a')
    where device_id = 'd0000000-0000-4000-8000-000000000001'),
  null, 'while the code is fresh the server is not asked for another');

select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') -> 'pairing_code',
  jsonb_build_object('code', 'ABCD1234', 'expires_at', now() + interval '3 minutes'),
  'get_device_qr serves the fresh code and its expiry next to the QR');
select tests.as_system(); -- the server side: no user claims left over
select is(public.publish_device_qr('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 3, 'qr-2', now() + interval '20 seconds') ->> 'accepted',
  'true', 'the QR rotates');
select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') #>> '{pairing_code,code}',
  'ABCD1234', 'the code stays the same across QR rotations');
select tests.as_system(); -- the server side: no user claims left over

-- Expiry --------------------------------------------------------------------------------------
update device_assignment.pairing_requests set code_expires_at = now() - interval '1 second'
 where device_id = 'd0000000-0000-4000-8000-000000000001';
select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') -> 'pairing_code', 'null'::jsonb,
  'an expired code is never served');
select tests.as_system(); -- the server side: no user claims left over
select is(
  (select pairing_phone from public.claim_devices('5e000000-0000-4000-8000-00000000000a')
    where device_id = 'd0000000-0000-4000-8000-000000000001'),
  '14155550123', 'once it expired the server is asked for a new one');

-- Asking again retires the code at once (the cooldown is over: its log row is made older).
select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 3, 'EFGH5678', now() + interval '3 minutes');
update device_assignment.pairing_request_log set requested_at = now() - interval '61 seconds'
 where device_id = 'd0000000-0000-4000-8000-000000000001';
select tests.as_user('owner-a');
select lives_ok($$select public.request_pairing_code('d0000000-0000-4000-8000-000000000001', '+14155550199')$$,
  'after the cooldown the owner may ask again, with another number');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') -> 'pairing_code', 'null'::jsonb,
  'asking again retires the code that was served');
select tests.as_system(); -- the server side: no user claims left over
select is(
  (select pairing_phone from public.claim_devices('5e000000-0000-4000-8000-00000000000a')
    where device_id = 'd0000000-0000-4000-8000-000000000001'),
  '14155550199', 'the server is asked for a code for the new number');

-- Carried over a move ---------------------------------------------------------------------------
select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 3, 'IJKL9012', now() + interval '3 minutes');
update public.backend_servers set last_health_ping = now() - interval '1 hour'
 where id = '5e000000-0000-4000-8000-00000000000a';
select is(
  (select assignment_epoch || ' ' || pairing_phone from public.claim_devices('5e000000-0000-4000-8000-00000000000b')
    where device_id = 'd0000000-0000-4000-8000-000000000001'),
  '4 14155550199', 'server-a died: server-b claims the device and is asked for a fresh code');
select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') -> 'pairing_code', 'null'::jsonb,
  'the old server''s code is not served after the move');
select tests.as_system(); -- the server side: no user claims left over
select throws_ok($$select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 3, 'LATE0000', now() + interval '3 minutes')$$,
  'PT409', 'fenced', 'the old server''s late code is fenced');
select is(public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 4, 'MNOP3456', now() + interval '3 minutes') ->> 'accepted',
  'true', 'the new server publishes its code');
select tests.as_user('owner-a');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') #>> '{pairing_code,code}',
  'MNOP3456', 'and the user sees the new server''s code');
select tests.as_system(); -- the server side: no user claims left over

-- Cleared on link, and on expiry ----------------------------------------------------------------
select public.report_device_status('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 4, 'connected');
select is((select count(*)::int from device_assignment.pairing_requests
            where device_id = 'd0000000-0000-4000-8000-000000000001'),
  0, 'once the device is linked its number is deleted');
select throws_ok($$select public.publish_device_pairing_code('d0000000-0000-4000-8000-000000000005',
  '5e000000-0000-4000-8000-00000000000b', 1, 'QRST7890', now() + interval '3 minutes')$$,
  'PT409', 'no_pairing_request', 'a code nobody asked for is refused');
update device_assignment.pairing_requests set requested_at = now() - interval '11 minutes',
       expires_at = now() - interval '1 minute'
 where device_id = 'd0000000-0000-4000-8000-000000000004';
select is(
  (select pairing_phone from public.claim_devices('5e000000-0000-4000-8000-00000000000b')
    where device_id = 'd0000000-0000-4000-8000-000000000004'),
  null, 'an expired request is not handed to the server');
select is((select count(*)::int from device_assignment.pairing_requests
            where device_id = 'd0000000-0000-4000-8000-000000000004'),
  0, 'the claim deleted the expired request, and with it the number');
update device_assignment.pairing_requests set expires_at = now() - interval '1 second'
 where device_id = 'd0000000-0000-4000-8000-000000000002';
select is(device_assignment.expire_pairing_requests(), 1, 'expiry deletes each expired request once');

select * from finish();
rollback;

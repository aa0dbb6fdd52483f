-- The user API: QR state, healing inside get_device_qr, and (re)starting pairing.
begin;
\ir reset_fleet.psql
select plan(27);

insert into auth.users (id, email) values
  ('a0000000-0000-4000-8000-000000000001', 'owner-a@example.com'),
  ('b0000000-0000-4000-8000-000000000002', 'owner-b@example.com');
insert into public.backend_servers (id, server_name, is_active, is_healthy, current_load, last_health_ping) values
  ('5e000000-0000-4000-8000-000000000001', 'live-1', true, true, 0, now()),
  ('5e000000-0000-4000-8000-000000000002', 'live-2', true, true, 5, now()),
  ('5e000000-0000-4000-8000-000000000003', 'dead-1', true, true, 0, now() - interval '5 minutes');
insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch,
                            assigned_at, qr_code, qr_updated_at, qr_expires_at) values
  -- idle
  ('d0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'idle', 'disconnected', null, 0, null, null, null, null),
  -- ready: fresh QR on a live server
  ('d0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 'ready', 'connecting', '5e000000-0000-4000-8000-000000000001', 3, now(), '2@ref,key', now(), now() + interval '60 seconds'),
  -- expired QR, still within grace
  ('d0000000-0000-4000-8000-000000000003', 'a0000000-0000-4000-8000-000000000001', 'expired', 'connecting', '5e000000-0000-4000-8000-000000000001', 1, now() - interval '10 seconds', 'old', now() - interval '70 seconds', now() - interval '10 seconds'),
  -- on a dead server
  ('d0000000-0000-4000-8000-000000000004', 'a0000000-0000-4000-8000-000000000001', 'orphan', 'connecting', '5e000000-0000-4000-8000-000000000003', 7, now() - interval '6 minutes', null, null, null),
  -- stale on a live server
  ('d0000000-0000-4000-8000-000000000005', 'a0000000-0000-4000-8000-000000000001', 'stale', 'connecting', '5e000000-0000-4000-8000-000000000001', 2, now() - interval '2 minutes', null, null, null),
  -- connected
  ('d0000000-0000-4000-8000-000000000006', 'a0000000-0000-4000-8000-000000000001', 'linked', 'connected', '5e000000-0000-4000-8000-000000000002', 4, now() - interval '1 hour', null, null, null),
  -- another user's device
  ('d0000000-0000-4000-8000-000000000007', 'b0000000-0000-4000-8000-000000000002', 'B phone', 'connecting', '5e000000-0000-4000-8000-000000000003', 1, now() - interval '6 minutes', null, null, null);

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub":"a0000000-0000-4000-8000-000000000001","role":"authenticated"}', true);

select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') ->> 'status', 'not_connecting',
  'an idle device is not_connecting');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000001') ->> 'reason', 'call_reassign_device',
  'an idle device tells the caller to start pairing');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000002') ->> 'status', 'ready',
  'a fresh QR is ready');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000002') #>> '{qr,value}', '2@ref,key',
  'a ready device carries its QR payload');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000002') #>> '{server,name}', 'live-1',
  'a ready device names its server');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000003') -> 'qr', 'null'::jsonb,
  'an expired QR is never served');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000003') ->> 'reason', 'waiting_for_server',
  'an expired QR within the grace period waits for its server');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000006') ->> 'status', 'connected',
  'a linked device is connected');

-- An orphan is moved to a live server in the same call.
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000004') - 'retry_after_ms' - 'server'
            - 'device_id' - 'qr' - 'last_error_code' - 'device_status',
  '{"status":"pending","reason":"reassigned_from_inactive_server","reassigned":true,"epoch":8,
    "pairing_code":null,"incident":null}'::jsonb,
  'a device on a dead server is reassigned inside get_device_qr, epoch bumped');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000004') #>> '{server,name}', 'live-1',
  'it lands on the live server with the lowest relative load');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000004') ->> 'reassigned', 'false',
  'the next call finds it already healed');

-- A stale device moves, and not back to the server it leaves.
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000005') ->> 'reason', 'reassigned_stale',
  'a stale device is reassigned inside get_device_qr');
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000005') #>> '{server,name}', 'live-2',
  'a stale device leaves its server for another one');

select throws_ok($$select public.get_device_qr('d0000000-0000-4000-8000-000000000007')$$,
  'PT404', 'not_found', 'another user''s device is not_found');
select throws_ok($$select public.get_device_qr('d0000000-0000-4000-8000-0000000000ff')$$,
  'PT404', 'not_found', 'a missing device is not_found, the same answer');

-- request_device_reassignment
select is(public.request_device_reassignment('d0000000-0000-4000-8000-000000000001') ->> 'reassigned', 'true',
  'an idle device starts pairing');
select is((select status from public.devices where id = 'd0000000-0000-4000-8000-000000000001'), 'connecting',
  'starting pairing sets status connecting');
select throws_ok($$select public.request_device_reassignment('d0000000-0000-4000-8000-000000000001')$$,
  'PT429', 'cooldown', 'a second request within the cooldown is refused');
select throws_ok($$select public.request_device_reassignment('d0000000-0000-4000-8000-000000000006')$$,
  'PT409', 'already_connected', 'a connected device is refused');
select throws_ok($$select public.request_device_reassignment('d0000000-0000-4000-8000-000000000007')$$,
  'PT404', 'not_found', 'another user''s device cannot be reassigned');
select is(public.request_device_reassignment('d0000000-0000-4000-8000-000000000003') - 'epoch' - 'device_id',
  '{"reassigned":true,"from_server":"5e000000-0000-4000-8000-000000000001","to_server":"5e000000-0000-4000-8000-000000000002"}'::jsonb,
  'restarting pairing moves the device off its current server');
select ok((select qr_code is null and reassign_count = 0 from public.devices
            where id = 'd0000000-0000-4000-8000-000000000003'),
  'restarting pairing clears the old QR and the reassignment budget');

-- Cooldown and no live servers, as get_device_qr reports them.
reset role;
update public.backend_servers set last_health_ping = now() - interval '1 hour';
update public.devices set assigned_server_id = null, last_reassigned_at = null
 where id = 'd0000000-0000-4000-8000-000000000002';
update public.devices set qr_expires_at = now() - interval '1 second'
 where id = 'd0000000-0000-4000-8000-000000000002';
set local role authenticated;
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000002') ->> 'reason', 'no_active_servers',
  'with no live server the device waits and says why');
select throws_ok($$select public.request_device_reassignment('d0000000-0000-4000-8000-000000000002')$$,
  'PT503', 'no_active_servers', 'starting pairing without a live server is refused');
reset role;
update public.backend_servers set last_health_ping = now() where server_name = 'live-1';
update public.devices set last_reassigned_at = now()
 where id = 'd0000000-0000-4000-8000-000000000002';
set local role authenticated;
select is(public.get_device_qr('d0000000-0000-4000-8000-000000000002') ->> 'reason', 'reassignment_cooldown',
  'an orphan moved moments ago waits out the cooldown');

select set_config('request.jwt.claims', '', true);
select throws_ok($$select public.get_device_qr('d0000000-0000-4000-8000-000000000002')$$,
  'PT401', 'unauthorized', 'no user in the claims is unauthorized');
reset role;

select is(
  (select count(*)::int from public.device_assignment_events
    where device_id = 'd0000000-0000-4000-8000-000000000004' and reason = 'server_inactive'
      and from_server_id = '5e000000-0000-4000-8000-000000000003'),
  1, 'the orphan''s move is in the audit trail exactly once');

select * from finish();
rollback;

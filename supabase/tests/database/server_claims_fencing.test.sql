-- The backend-server API: heartbeat lease, claims, and fencing by epoch.
begin;
\ir reset_fleet.psql
select plan(29);

insert into auth.users (id, email) values ('a0000000-0000-4000-8000-000000000001', 'owner-a@example.com');

select is(public.server_heartbeat('worker-1', 0, 3, '{"region":"eu"}') ->> 'heartbeat_timeout_ms', '30000',
  'a heartbeat registers the server and returns the lease timings');
select is((select count(*)::int from public.backend_servers where server_name = 'worker-1'), 1,
  'the server is registered once');
select is(public.server_heartbeat('worker-1', 2, 3, '{}') ->> 'server_id',
  (select id::text from public.backend_servers where server_name = 'worker-1'),
  'a second heartbeat refreshes the same server');
select throws_ok($$select public.server_heartbeat('', 0, null, '{}')$$, 'PT400', 'invalid_argument',
  'an empty server name is refused');
select throws_ok($$select public.server_heartbeat('w', -1, null, '{}')$$, 'PT400', 'invalid_argument',
  'a negative load is refused');
select throws_ok($$select public.server_heartbeat('w', 0, 0, '{}')$$, 'PT400', 'invalid_argument',
  'a zero capacity is refused');

select is(public.server_heartbeat('worker-1', 2, 3, '{}') -> 'next_lease_expiry_ms', 'null'::jsonb,
  'a server alone is told of no other lease');
select public.server_heartbeat('worker-2', 0, null, '{}');
insert into public.backend_servers (id, server_name, last_health_ping)
values ('5e000000-0000-4000-8000-0000000000de', 'dead', now() - interval '1 hour');
-- worker-2 last heard from 20 s ago, with a 30 s timeout; the dead one is not live.
update public.backend_servers set last_health_ping = now() - interval '20 seconds'
 where server_name = 'worker-2';
select is((public.server_heartbeat('worker-1', 2, 3, '{}') ->> 'next_lease_expiry_ms')::int, 10000,
  'a heartbeat says when the next lease of another live server runs out, for a claim just after it');
update public.backend_servers set last_health_ping = now() where server_name = 'worker-2';

insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch, connecting_since)
select ('d0000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid,
       'a0000000-0000-4000-8000-000000000001', 'phone ' || n, 'connecting',
       case when n <= 4 then '5e000000-0000-4000-8000-0000000000de'::uuid end, 10,
       now() - (n || ' minutes')::interval
from generate_series(1, 6) n;
-- A linked device held by a live server (one on a dead server fails over: 07).
insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch)
values ('d0000000-0000-4000-8000-000000000099', 'a0000000-0000-4000-8000-000000000001', 'linked',
        'connected', (select id from public.backend_servers where server_name = 'worker-2'), 5);

-- worker-1 has room for 1 more (load 2, capacity 3).
select is(
  (select count(*)::int from public.claim_devices(
     (select id from public.backend_servers where server_name = 'worker-1'), 10) where claimed),
  1, 'a claim never takes a server past its capacity');
select is(
  (select count(*)::int from public.claim_devices(
     (select id from public.backend_servers where server_name = 'worker-2'), 3)),
  3, 'a claim never returns more than the limit');
select is(
  (select count(*)::int from public.claim_devices(
     (select id from public.backend_servers where server_name = 'worker-2'), 10)),
  5, 'a later claim returns the devices already held plus the rest of the orphans');
select is(
  (select count(*)::int from public.claim_devices(
     (select id from public.backend_servers where server_name = 'worker-2'), 10) where claimed),
  0, 'devices already held are not claimed again');
select is(
  (select assignment_epoch from public.devices where id = 'd0000000-0000-4000-8000-000000000001'), 11::bigint,
  'a claimed device''s epoch is bumped');
select is(
  (select status from public.devices where id = 'd0000000-0000-4000-8000-000000000099'), 'connected',
  'connected devices are never claimed');
select is(
  (select count(*)::int from public.device_assignment_events where reason = 'claimed'), 6,
  'every claim is audited');
select is(
  (public.server_heartbeat('worker-2', 0, null, '{}') ->> 'server_id')::uuid is not null
   and (select current_load from public.backend_servers where server_name = 'worker-2') = 5,
  true, 'a heartbeat never reports less load than the connecting devices the server holds');
select throws_ok(
  $$select * from public.claim_devices('5e000000-0000-4000-8000-0000000000de', 10)$$,
  'PT409', 'server_not_live', 'a server whose lease lapsed cannot claim');
select throws_ok(
  $$select * from public.claim_devices('5e000000-0000-4000-8000-0000000000de', 0)$$,
  'PT400', 'invalid_argument', 'a zero limit is refused');

-- Fencing: the current owner at the current epoch, and nobody else.
create temporary table owner_now as
select d.id, d.assigned_server_id as server_id, d.assignment_epoch as epoch
from public.devices d where d.id = 'd0000000-0000-4000-8000-000000000001';

select is(
  public.publish_device_qr((select id from owner_now), (select server_id from owner_now),
    (select epoch from owner_now), '2@abc,def,ghi,jkl', now() + interval '60 seconds') ->> 'accepted',
  'true', 'the owner''s QR at the current epoch is accepted');
select is((select qr_code from public.devices where id = 'd0000000-0000-4000-8000-000000000001'),
  '2@abc,def,ghi,jkl', 'the accepted QR is stored');
select throws_ok(
  format($$select public.publish_device_qr(%L, %L, %s, 'x', now() + interval '1 minute')$$,
    (select id from owner_now), (select server_id from owner_now), (select epoch - 1 from owner_now)),
  'PT409', 'fenced', 'a QR with a stale epoch is rejected');
select throws_ok(
  format($$select public.publish_device_qr(%L, %L, %s, 'x', now() + interval '1 minute')$$,
    (select id from owner_now), '5e000000-0000-4000-8000-0000000000de', (select epoch from owner_now)),
  'PT409', 'fenced', 'a QR from another server is rejected');
select throws_ok(
  format($$select public.report_device_status(%L, %L, %s, 'connected')$$,
    (select id from owner_now), (select server_id from owner_now), (select epoch + 1 from owner_now)),
  'PT409', 'fenced', 'a status report with the wrong epoch is rejected');
select throws_ok(
  format($$select public.publish_device_qr(%L, %L, %s, 'x', now() - interval '1 second')$$,
    (select id from owner_now), (select server_id from owner_now), (select epoch from owner_now)),
  'PT400', 'invalid_argument', 'an already expired QR is refused');
select is(
  public.report_device_status((select id from owner_now), (select server_id from owner_now),
    (select epoch from owner_now), 'connected') ->> 'status',
  'connected', 'the owner''s status report is accepted');
select ok((select status = 'connected' and qr_code is null from public.devices
            where id = 'd0000000-0000-4000-8000-000000000001'),
  'a connected device drops its QR');
select throws_ok(
  format($$select public.publish_device_qr(%L, %L, %s, 'x', now() + interval '1 minute')$$,
    (select id from owner_now), (select server_id from owner_now), (select epoch from owner_now)),
  'PT409', 'not_connecting', 'no QR is taken for a device that is no longer connecting');

-- Graceful shutdown: worker-2's connecting devices go to worker-1 at once.
update public.backend_servers set max_capacity = null where server_name = 'worker-1';
select is(
  public.server_shutdown((select id from public.backend_servers where server_name = 'worker-2')) - 'server_id',
  '{"released": 4, "reassigned": 4, "sessions_handed_over": 2}'::jsonb,
  'shutdown releases and reassigns every connecting device, and hands over its two linked ones');
select is(
  (select count(*)::int from public.devices d join public.backend_servers s on s.id = d.assigned_server_id
    where s.server_name = 'worker-1' and d.status = 'connecting'),
  7, 'they join worker-1''s own device on the remaining live server (the linked ones, with no stored session, to pair again)');

select * from finish();
rollback;

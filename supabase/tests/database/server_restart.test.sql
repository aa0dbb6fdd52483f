-- A server that crashes and restarts under the same name before its lease
-- runs out: its linked devices fail over to the new process (the heartbeat's
-- p_instance_id), instead of staying `connected` with nobody holding them.
begin;
\ir reset_fleet.psql
select plan(9);

insert into auth.users (id, email) values ('a0000000-0000-4000-8000-000000000001', 'owner-a@example.com');

select is((public.server_heartbeat('railway-1', 0, null, '{}', 'aaaaaaaa-0000-4000-8000-000000000001')
           ->> 'sessions_failed_over')::int, 0, 'a first heartbeat fails nothing over');

-- Linked on railway-1: device 1 with a stored session, device 2 without; device 3 is pairing.
insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch,
                            assigned_at, connecting_since)
select ('d0000000-0000-4000-8000-00000000000' || n)::uuid, 'a0000000-0000-4000-8000-000000000001',
       'device ' || n, case when n < 3 then 'connected' else 'connecting' end, s.id, 4, now(), now()
from generate_series(1, 3) n, public.backend_servers s where s.server_name = 'railway-1';
insert into device_assignment.device_sessions (device_id, type, id, value) values
  ('d0000000-0000-4000-8000-000000000001', 'creds', 'creds', 'SECRET-creds');

select is((public.server_heartbeat('railway-1', 3, null, '{}', 'aaaaaaaa-0000-4000-8000-000000000001')
           ->> 'sessions_failed_over')::int, 0, 'the same process heartbeating again fails nothing over');
select is((public.server_heartbeat('railway-1', 0, null, '{}') ->> 'sessions_failed_over')::int, 0,
  'a backend that sends no instance id behaves as before');
select is((select status from public.devices where id = 'd0000000-0000-4000-8000-000000000001'),
  'connected', 'so its linked device stays connected');

select is((public.server_heartbeat('railway-1', 0, null, '{}', 'bbbbbbbb-0000-4000-8000-000000000002')
           ->> 'sessions_failed_over')::int, 2, 'a new process under the name fails both linked devices over');
select is(
  (select array_agg(row(status, assignment_epoch, s.server_name)::text order by d.id)
     from public.devices d join public.backend_servers s on s.id = d.assigned_server_id),
  array[row('reconnecting', 5::bigint, 'railway-1')::text, row('connecting', 5::bigint, 'railway-1')::text,
        row('connecting', 4::bigint, 'railway-1')::text],
  'with a session it is resumed by the new process at a new epoch; without one it pairs; pairing is untouched');
select is(
  (select array_agg(row(reason, actor)::text) from public.device_assignment_events
    where device_id = 'd0000000-0000-4000-8000-000000000001'),
  array[row('session_failover', 'server:railway-1')::text], 'the move is audited as a session failover');
select is(
  (select count(*)::int from public.claim_devices(
     (select id from public.backend_servers where server_name = 'railway-1'), 10) c
    where c.device_id = 'd0000000-0000-4000-8000-000000000001' and c.status = 'reconnecting'),
  1, 'the new process''s claim lists the device to resume');
select is((public.server_heartbeat('railway-1', 0, null, '{}', 'bbbbbbbb-0000-4000-8000-000000000002')
           ->> 'sessions_failed_over')::int, 0, 'and its next heartbeat fails nothing over again');

select * from finish();
rollback;

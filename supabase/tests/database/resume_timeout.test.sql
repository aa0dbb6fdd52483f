-- A resume that never reports: a `reconnecting` device on a live server that
-- reports neither `connected` nor `logged_out` within the connecting grace is
-- moved to another live server through the one writer.
begin;
\ir reset_fleet.psql
select plan(13);

insert into auth.users (id, email) values ('a0000000-0000-4000-8000-000000000001', 'owner-a@example.com');
insert into public.backend_servers (id, server_name, last_health_ping, current_load) values
  ('5e000000-0000-4000-8000-00000000000a', 'hung-a', now(), 2),
  ('5e000000-0000-4000-8000-00000000000b', 'live-b', now(), 0);

-- Device 1 has been resuming on hung-a for an hour; device 2 was handed to it a
-- moment ago.
insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch,
                            assigned_at, connecting_since, reassign_count)
values
  ('d0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'hung resume',
   'reconnecting', '5e000000-0000-4000-8000-00000000000a', 5, now() - interval '1 hour',
   now() - interval '1 hour', 0),
  ('d0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 'fresh resume',
   'reconnecting', '5e000000-0000-4000-8000-00000000000a', 3, now() - interval '5 seconds',
   now() - interval '5 seconds', 0);
insert into device_assignment.device_sessions (device_id, type, id, value) values
  ('d0000000-0000-4000-8000-000000000001', 'creds', 'creds', 'SECRET-creds'),
  ('d0000000-0000-4000-8000-000000000002', 'creds', 'creds', 'SECRET-creds-2');

select is((select array_agg(id) from device_assignment.stale_resumes),
  array['d0000000-0000-4000-8000-000000000001'::uuid],
  'a resume older than the connecting grace on a live server is stale; a fresh one is not');

select is((public.run_assignment_maintenance() ->> 'sessions_failed_over')::int, 1,
  'a maintenance pass moves the stale resume');
select is(
  (select row(assigned_server_id, assignment_epoch, status)::text from public.devices
    where id = 'd0000000-0000-4000-8000-000000000001'),
  row('5e000000-0000-4000-8000-00000000000b'::uuid, 6::bigint, 'reconnecting'::text)::text,
  'it is on the other live server, at a new epoch, still resuming (no QR)');
select is(
  (select row(from_server_id, to_server_id, epoch, reason, actor)::text
     from public.device_assignment_events where device_id = 'd0000000-0000-4000-8000-000000000001'),
  row('5e000000-0000-4000-8000-00000000000a'::uuid, '5e000000-0000-4000-8000-00000000000b'::uuid,
      6::bigint, 'session_failover'::text, 'maintenance'::text)::text,
  'the move is audited as a session failover');
select is((select reassign_count from public.devices where id = 'd0000000-0000-4000-8000-000000000001'),
  0, 'a hung server is not the device''s fault: no reassignment is spent');
select is((select array_agg(current_load order by server_name) from public.backend_servers),
  array[1, 1], 'the load moves with it');
select is(
  (select row(assigned_server_id, assignment_epoch)::text from public.devices
    where id = 'd0000000-0000-4000-8000-000000000002'),
  row('5e000000-0000-4000-8000-00000000000a'::uuid, 3::bigint)::text,
  'the fresh resume is left to its server');

select throws_ok($$select public.device_session_write('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000a', 5, '[{"type":"creds","id":"creds","value":"late"}]')$$,
  'PT409', 'fenced', 'the hung server''s late session write is fenced');
select is(public.device_session_read('d0000000-0000-4000-8000-000000000001',
  '5e000000-0000-4000-8000-00000000000b', 6, 'creds', null),
  '{"creds": "SECRET-creds"}'::jsonb, 'the new server reads the stored session');

select is((public.run_assignment_maintenance() ->> 'sessions_failed_over')::int, 0,
  'a second pass finds nothing to move');

-- With no other live server the hung server gets a fresh attempt: the epoch
-- bump fences the attempt that hung, and its claim restarts the resume.
update public.backend_servers set last_health_ping = now() - interval '1 hour'
 where id = '5e000000-0000-4000-8000-00000000000b';
update public.devices set assigned_at = now() - interval '1 hour'
 where id = 'd0000000-0000-4000-8000-000000000002';
select lives_ok($$select public.run_assignment_maintenance()$$, 'a pass with one live server');
select is(
  (select row(assigned_server_id, assignment_epoch, status)::text from public.devices
    where id = 'd0000000-0000-4000-8000-000000000002'),
  row('5e000000-0000-4000-8000-00000000000a'::uuid, 4::bigint, 'reconnecting'::text)::text,
  'alone, the hung server gets the device again at a new epoch');

-- The bound is the connecting grace setting.
update public.assignment_settings set connecting_grace = '2 hours';
update public.devices set assigned_server_id = '5e000000-0000-4000-8000-00000000000a'
 where id = 'd0000000-0000-4000-8000-000000000002';
select is((select count(*)::int from device_assignment.stale_resumes), 0,
  'within a longer connecting grace nothing is stale');

select * from finish();
rollback;

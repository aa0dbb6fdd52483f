-- The operator API: bulk reassignment with dry runs, the maintenance pass,
-- assignment_health(), and the audit purge.
begin;
\ir reset_fleet.psql
select plan(36);

insert into auth.users (id, email) values ('a0000000-0000-4000-8000-000000000001', 'owner-a@example.com');
insert into public.backend_servers (id, server_name, is_active, is_healthy, current_load, max_capacity, last_health_ping) values
  ('5e000000-0000-4000-8000-000000000001', 'live-1', true, true, 2, null, now()),
  ('5e000000-0000-4000-8000-000000000002', 'live-2', true, true, 0, null, now()),
  ('5e000000-0000-4000-8000-000000000003', 'dead-1', true, true, 20, null, now() - interval '2 minutes'),
  ('5e000000-0000-4000-8000-000000000004', 'dead-2', true, false, 0, null, now());

-- 20 devices on dead servers, 2 stale on live-1, 1 connected, 1 idle.
insert into public.devices (id, user_id, device_name, status, assigned_server_id, assignment_epoch, assigned_at)
select ('d0000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid,
       'a0000000-0000-4000-8000-000000000001', 'phone ' || n,
       case when n = 23 then 'connected' when n = 24 then 'disconnected' else 'connecting' end,
       case when n <= 10 then '5e000000-0000-4000-8000-000000000003'::uuid
            when n <= 20 then '5e000000-0000-4000-8000-000000000004'::uuid
            else '5e000000-0000-4000-8000-000000000001'::uuid end,
       1,
       case when n in (21, 22) then now() - interval '5 minutes' else now() end
from generate_series(1, 24) n;

update public.devices set assigned_server_id = null where id = 'd0000000-0000-4000-8000-000000000020';
select set_eq('select id from device_assignment.orphaned_devices',
  'select * from device_assignment.orphaned_device_ids()',
  'the orphan enumeration and the orphan rule agree (dead, unhealthy and no server)');
create temporary table before_dry_run as select * from public.devices;

select is(public.reassign_devices('inactive', null, true) ->> 'count', '20',
  'a dry run of reset-inactive plans every orphaned device');
select is(jsonb_array_length(public.reassign_devices('inactive', null, true) -> 'devices'), 20,
  'the dry run lists each device with its from and to');
select is(public.reassign_devices('all_connecting', null, true) ->> 'count', '22',
  'a dry run of reset-all plans every connecting device');
select is(
  (select count(*)::int from public.devices d join before_dry_run b using (id)
    where row(d.*) is distinct from row(b.*)),
  0, 'dry runs change nothing');
select is((select count(*)::int from public.device_assignment_events), 0, 'dry runs write no audit row');

select throws_ok($$select public.reassign_devices('everything')$$, 'PT400', 'invalid_argument',
  'an unknown scope is refused');
select throws_ok($$select public.reassign_devices('device')$$, 'PT400', 'invalid_argument',
  'scope device without a device id is refused');
select throws_ok($$select public.reassign_devices('device', 'd0000000-0000-4000-8000-0000000000ff')$$,
  'PT404', 'not_found', 'an unknown device is not_found');
select throws_ok($$select public.reassign_devices('device', 'd0000000-0000-4000-8000-000000000023')$$,
  'PT409', 'already_connected', 'a connected device is not reset');

select is(public.reassign_devices('device', 'd0000000-0000-4000-8000-000000000024') #>> '{devices,0,to}',
  '5e000000-0000-4000-8000-000000000002', 'reset-device restarts pairing on a live server other than its own');
select is((select status from public.devices where id = 'd0000000-0000-4000-8000-000000000024'), 'connecting',
  'reset-device sets it connecting');

-- reset-inactive spreads the orphans evenly over the two live servers.
select is(public.reassign_devices('inactive') ->> 'count', '20', 'reset-inactive moves all 20 orphans');
select is(
  (select array_agg(current_load order by server_name) from public.backend_servers
    where server_name like 'live-%'),
  array[11, 11], 'orphans fill the live servers evenly, counting the load already there');
select is((select count(*)::int from device_assignment.orphaned_devices), 0, 'no orphan remains');
select is((select count(*)::int from public.device_assignment_events where reason = 'server_inactive'), 20,
  'each move is audited');

-- Maintenance: marks silent servers inactive, heals stale devices, expires QRs.
update public.devices set qr_code = 'old', qr_updated_at = now() - interval '2 minutes',
  qr_expires_at = now() - interval '1 minute'
 where id = 'd0000000-0000-4000-8000-000000000024';
select is(public.run_assignment_maintenance() - 'duration_ms',
  '{"skipped": false, "servers_marked_inactive": 1, "orphaned_reassigned": 0, "stale_reassigned": 2,
    "left_unassigned": 0, "qr_expired": 1, "moved_to_error": 0, "sessions_failed_over": 0,
    "failures_retried": 0, "incidents_ended": 0}'::jsonb,
  'a maintenance pass marks the silent server inactive, moves the stale devices and expires the old QR');
select is((select is_active from public.backend_servers where server_name = 'dead-1'), false,
  'the silent server is marked inactive');
select is(
  (select count(*)::int from public.devices where id in ('d0000000-0000-4000-8000-000000000021',
     'd0000000-0000-4000-8000-000000000022') and assigned_server_id = '5e000000-0000-4000-8000-000000000002'),
  2, 'the stale devices left live-1 for live-2');
select is(public.run_assignment_maintenance() - 'duration_ms',
  '{"skipped": false, "servers_marked_inactive": 0, "orphaned_reassigned": 0, "stale_reassigned": 0,
    "left_unassigned": 0, "qr_expired": 0, "moved_to_error": 0, "sessions_failed_over": 0,
    "failures_retried": 0, "incidents_ended": 0}'::jsonb,
  'a second pass finds nothing to do');

-- A device that keeps landing on broken servers ends in error, not in a loop.
update public.devices set assigned_server_id = '5e000000-0000-4000-8000-000000000003', reassign_count = 5,
  last_reassigned_at = now() - interval '1 hour'
 where id = 'd0000000-0000-4000-8000-000000000001';
select is((public.run_assignment_maintenance() ->> 'moved_to_error')::int, 1,
  'a device past max_reassignments is moved to error');
select matches((select last_error from public.devices where id = 'd0000000-0000-4000-8000-000000000001'),
  '^max_reassignments_exceeded', 'its last_error says why');

-- With no live server an orphan is released, and left alone after that.
update public.backend_servers set last_health_ping = now() - interval '1 hour';
update public.devices set last_reassigned_at = now() - interval '1 hour';
-- The linked device (23) lost its server too; with no stored session it goes
-- back to pairing, so it is released like the 22 orphans.
select is((public.run_assignment_maintenance() ->> 'left_unassigned')::int, 23,
  'with no live server the orphans are released from their dead servers');
select is((public.run_assignment_maintenance() ->> 'left_unassigned')::int, 0,
  'and later passes leave them be instead of burning their budget');
select is((select max(reassign_count) from public.devices where status = 'connecting'), 1,
  'releasing a device does not count as a reassignment');
select throws_ok($$select public.reassign_devices('inactive')$$, 'PT503', 'no_active_servers',
  'reset-inactive with no live server says so');
create temporary table before_plan as select * from public.devices;
select is(public.reassign_devices('inactive', null, true) ->> 'reason', 'no_active_servers',
  'a dry run of reset-inactive with no live server answers its plan and says why nothing would move now');
select is(
  (select count(*)::int from jsonb_array_elements(public.reassign_devices('inactive', null, true) -> 'devices') e
    where e -> 'to' = 'null'::jsonb and e ? 'from'),
  23, 'the plan lists every orphan, each with to: null');
select is(public.reassign_devices('device', 'd0000000-0000-4000-8000-000000000024', true) #>> '{devices,0,id}',
  'd0000000-0000-4000-8000-000000000024', 'a dry run of reset-device with no live server still names the device');
select is(
  (select count(*)::int from public.devices d join before_plan b using (id)
    where row(d.*) is distinct from row(b.*)),
  0, 'and those dry runs change nothing');

select set_eq('select id from device_assignment.orphaned_devices',
  'select * from device_assignment.orphaned_device_ids()',
  'they still agree with every server silent');

-- assignment_health answers the whole checklist.
select is(
  (select array_agg(k order by k) from jsonb_object_keys(public.assignment_health()) k),
  array['cron_jobs', 'device_errors', 'devices_by_server', 'devices_by_status', 'incidents', 'live_servers', 'now', 'orphaned',
        'servers', 'settings', 'stale'],
  'assignment_health has every section');
select is((public.assignment_health() ->> 'orphaned')::int, 23, 'it counts the orphans');
select is((public.assignment_health() -> 'devices_by_status' ->> 'error')::int, 1, 'it counts devices by status');
select is(jsonb_array_length(public.assignment_health() -> 'servers'), 4, 'it lists every server');

-- Purge keeps the audit trail within its retention. (Aging rows is an update,
-- which the append-only trigger refuses: the test lifts it in its transaction.)
alter table public.device_assignment_events disable trigger device_assignment_events_append_only;
update public.device_assignment_events set created_at = now() - interval '31 days'
 where reason = 'server_inactive';
alter table public.device_assignment_events enable trigger device_assignment_events_append_only;
select is((device_assignment.purge_history() ->> 'events_deleted')::int, 42,
  'events older than the retention are purged (20 moves + 22 releases)');

select * from finish();
rollback;

-- Failure classes and fleet incidents: a failure on one server is retried on
-- another within the budget; the same failure on most servers is an incident
-- that holds its devices at no cost and releases them when it ends.
begin;
\ir reset_fleet.psql
select plan(29);

select tests.create_user('owner');
select tests.create_server('srv-a'), tests.create_server('srv-b'), tests.create_server('srv-c');
select tests.create_device('phone-a', 'owner', 'connecting', 'srv-a', 1);
select tests.create_device('phone-b', 'owner', 'connecting', 'srv-b', 1);
select tests.create_device('phone-c', 'owner', 'connecting', 'srv-c', 1);
select tests.create_device('phone-q', 'owner', 'connecting', 'srv-c', 1);

-- Classes --------------------------------------------------------------------------------------
select is(device_assignment.error_code('error', 'version_outdated: Connection Failure (405)'),
  'version_outdated', 'a report "<code>: <text>" is classified by its code');
select is(device_assignment.error_code('error', 'rate_limited'), 'rate_limited', 'a bare code is its class');
select is(device_assignment.error_code('error', 'socket hang up'), 'server_error',
  'any other text is a server_error');
select is(device_assignment.error_code('error', 'made_up_code: x'), 'server_error',
  'an undocumented code is a server_error');

-- One server fails: the device is tried on another ---------------------------------------------
select tests.as_backend('srv-a');
select public.report_device_status(tests.id('phone-a'), tests.id('srv-a'), 1, 'error',
  'connection_failure: the address is refused');
select tests.as_system();
select is((select last_error from public.devices where id = tests.id('phone-a')), 'connection_failure',
  'owners see the class');
select is((select count(*)::int from device_assignment.fleet_incidents), 0,
  'one server failing is no incident');
select ok((public.run_assignment_maintenance() ->> 'failures_retried')::int >= 1,
  'maintenance retries the failed device');
select ok((select status = 'connecting' and assigned_server_id <> tests.id('srv-a') and last_error is null
                  and reassign_count = 1
             from public.devices where id = tests.id('phone-a')),
  'on another live server, pairing, one move spent');
select is((select reason from public.device_assignment_events
            where device_id = tests.id('phone-a') order by id desc limit 1),
  'server_failure', 'audited as server_failure');

-- qr_timeout keeps today's give-up policy.
select tests.as_backend('srv-c');
select public.report_device_status(tests.id('phone-q'), tests.id('srv-c'), 1, 'qr_timeout');
select tests.as_system();
select public.run_assignment_maintenance();
select is((select status from public.devices where id = tests.id('phone-q')), 'qr_timeout',
  'a QR nobody scanned is not retried');

-- A device that fails everywhere stops at max_reassignments.
update public.assignment_settings set max_reassignments = 1;
update public.devices set status = 'error', last_error = 'server_error', reassign_count = 1
 where id = tests.id('phone-a');
select public.run_assignment_maintenance();
select is((select device_assignment.error_code(status, last_error) from public.devices
            where id = tests.id('phone-a')),
  'max_reassignments_exceeded', 'past its budget it stays failed, and says why');
update public.assignment_settings set max_reassignments = 5;

-- Most servers fail alike: a fleet incident ------------------------------------------------------
select tests.as_backend('srv-b');
select public.report_device_status(tests.id('phone-b'), tests.id('srv-b'), 1, 'error',
  'version_outdated: Connection Failure');
select tests.as_system();
select is((select count(*)::int from device_assignment.fleet_incidents), 0,
  'one of three servers is not half');
select tests.as_backend('srv-c');
select public.report_device_status(tests.id('phone-c'), tests.id('srv-c'), 1, 'error',
  'version_outdated: Connection Failure');
select tests.as_system();
select is((select code from device_assignment.fleet_incidents where ended_at is null),
  'version_outdated', 'two of three servers open an incident of that code');
select is((public.assignment_health() -> 'incidents' -> 0 ->> 'devices_held')::int, 2,
  'operators see it, with the devices it holds');

select public.run_assignment_maintenance();
select is((select count(*)::int from public.devices
            where id in (tests.id('phone-b'), tests.id('phone-c')) and status = 'error'), 2,
  'held devices are not moved');

select tests.as_user('owner');
select is(public.get_device_qr(tests.id('phone-b')) ->> 'reason', 'fleet_incident',
  'the owner sees pending for a fleet incident');
select is((public.get_device_qr(tests.id('phone-b')) -> 'incident' ->> 'code'), 'version_outdated',
  'with its code');
select is(public.request_device_reassignment(tests.id('phone-b')) ->> 'reason', 'fleet_incident',
  'a reassignment during it is answered with the reason');
select tests.as_system();
select is((select count(*)::int from public.device_assignment_events
            where device_id = tests.id('phone-b') and reason = 'user_request'), 0,
  'and charges nothing');

-- A linked device whose resume failed the same way keeps its session.
select tests.create_device('phone-s', 'owner', 'error', 'srv-b', 1);
update public.devices set last_error = 'version_outdated' where id = tests.id('phone-s');
insert into device_assignment.device_sessions (device_id, type, id, value)
values (tests.id('phone-s'), 'creds', 'creds', '{}');

-- The first QR again ends it; its devices go back to pairing by themselves.
select tests.create_device('phone-d', 'owner', 'connecting', 'srv-a', 1);
select tests.as_backend('srv-a');
select public.publish_device_qr(tests.id('phone-d'), tests.id('srv-a'), 1, 'qr-again',
                                now() + interval '1 minute');
select tests.as_system();
select is((select ended_by from device_assignment.fleet_incidents order by id desc limit 1),
  'recovered:srv-a', 'a QR from any server ends the incident');
select ok((select bool_and(status = 'connecting' and assigned_server_id is null and reassign_count = 0)
             from public.devices where id in (tests.id('phone-b'), tests.id('phone-c'))),
  'its devices are back in the claim queue with their whole budget');
select ok((select status = 'reconnecting' and assigned_server_id is null
             from public.devices where id = tests.id('phone-s')),
  'and one with a stored session is resumed, not paired again');

-- A quiet window ends an incident too: in the owner's next get_device_qr, not
-- only at the next maintenance run.
update public.devices set status = 'error', last_error = 'rate_limited' where id = tests.id('phone-b');
insert into device_assignment.fleet_incidents (code, servers)
values ('rate_limited', array[tests.id('srv-b'), tests.id('srv-c')]);
insert into device_assignment.failure_reports (server_id, code) values (tests.id('srv-b'), 'rate_limited');
select tests.as_user('owner');
select is(public.get_device_qr(tests.id('phone-b')) ->> 'reason', 'fleet_incident',
  'a report within the window keeps the incident open');
select tests.as_system();
update device_assignment.failure_reports set reported_at = now() - interval '3 minutes';
select tests.as_user('owner');
select is(public.get_device_qr(tests.id('phone-b')) ->> 'incident', null,
  'once the window passed with no report, the owner''s next call ends it');
select tests.as_system();
select ok((select status = 'connecting' and last_error is null and reassign_count = 1
                  and assigned_server_id in (select id from device_assignment.live_servers)
             from public.devices where id = tests.id('phone-b')),
  'and the device is pairing on a live server again: one move from a whole budget');
select is((select ended_by from device_assignment.fleet_incidents where code = 'rate_limited'),
  'quiet', 'audited as ended by the quiet window');

-- A quiet end is a probe: one server failing the same way right after reopens it.
select tests.create_device('phone-r', 'owner', 'connecting', 'srv-a', 1);
select tests.as_backend('srv-a');
select public.report_device_status(tests.id('phone-r'), tests.id('srv-a'), 1, 'error',
  'rate_limited: still refused');
select tests.as_system();
select is((select count(*)::int from device_assignment.fleet_incidents
            where code = 'rate_limited' and ended_at is null), 1,
  'one report within the window after a quiet end opens the incident again');
select tests.as_user('owner');
select is(public.get_device_qr(tests.id('phone-r')) ->> 'reason', 'fleet_incident',
  'and holds the device it failed');
select tests.as_system();

insert into device_assignment.fleet_incidents (code, servers)
values ('server_error', array[tests.id('srv-b'), tests.id('srv-c')]);
select is(device_assignment.end_quiet_incidents(), 1, 'maintenance ends every quiet incident');

select * from finish();
rollback;

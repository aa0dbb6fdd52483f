-- assignment_health counts devices from device_assignment.device_counts, kept
-- in step by a statement trigger; at every step here its figures equal a plain
-- recount of devices, through inserts, claims, reports, moves, deletes, a
-- server deleted under its devices, random updates, a fold and a truncate.
begin;
\ir reset_fleet.psql
select plan(10);

create function pg_temp.recount() returns jsonb language sql as $$
  select jsonb_build_object(
    'devices_by_status', coalesce((select jsonb_object_agg(t.status, t.n)
                                     from (select d.status, count(*) as n from public.devices d
                                            group by d.status) t), '{}'::jsonb),
    'devices_by_server', coalesce((select jsonb_agg(jsonb_build_object(
                                            'server_id', t.assigned_server_id, 'server_name', s.server_name,
                                            'status', t.status, 'count', t.n)
                                            order by s.server_name nulls first, t.status)
                                     from (select d.assigned_server_id, d.status, count(*) as n
                                             from public.devices d
                                            where d.status in ('connecting', 'connected')
                                            group by 1, 2) t
                                     left join public.backend_servers s on s.id = t.assigned_server_id),
                                  '[]'::jsonb),
    'connecting_devices', coalesce((select jsonb_object_agg(s.server_name,
                                            (select count(*) from public.devices d
                                              where d.assigned_server_id = s.id and d.status = 'connecting'))
                                     from public.backend_servers s), '{}'::jsonb))
$$;
create function pg_temp.reported() returns jsonb language sql as $$
  select jsonb_build_object(
    'devices_by_status', h -> 'devices_by_status',
    'devices_by_server', h -> 'devices_by_server',
    'connecting_devices', coalesce((select jsonb_object_agg(s ->> 'name', (s -> 'connecting_devices')::bigint)
                                      from jsonb_array_elements(h -> 'servers') s), '{}'::jsonb))
  from (select device_assignment.assignment_health() as h) x
$$;

select tests.create_user('owner');
select tests.create_server('srv-a'), tests.create_server('srv-b'), tests.create_server('dead', false);
insert into public.devices (user_id, device_name, status, connecting_since)
select tests.id('owner'), 'phone ' || i, 'connecting', now() from generate_series(1, 40) i;
select tests.create_device('linked', 'owner', 'connected', 'srv-a', 1);
select tests.create_device('orphan', 'owner', 'connecting', 'dead', 1);
select is(pg_temp.reported(), pg_temp.recount(), 'after inserts');

select count(*) from public.claim_devices(tests.id('srv-a'), 15);
select count(*) from public.claim_devices(tests.id('srv-b'), 30);
select is(pg_temp.reported(), pg_temp.recount(), 'after claims, the dead server''s orphan included');

select public.report_device_status(d.id, d.assigned_server_id, d.assignment_epoch, 'error', 'x')
from public.devices d where d.assigned_server_id = tests.id('srv-b') and d.status = 'connecting' limit 5;
select public.report_device_status(tests.id('linked'), tests.id('srv-a'), 1, 'logged_out');
select is(pg_temp.reported(), pg_temp.recount(), 'after status reports');

select public.set_backend_server_enabled('srv-a', false);
select is(pg_temp.reported(), pg_temp.recount(), 'after a server is disabled and its devices move');

delete from public.devices where status = 'error';
delete from public.backend_servers where server_name = 'dead';
select is(pg_temp.reported(), pg_temp.recount(), 'after deletes, and a server deleted under its devices');

select setseed(0.42);
do $$
declare
  v_statuses text[] := device_assignment.statuses('stored');
  v_servers uuid[] := array[tests.id('srv-a'), tests.id('srv-b'), null];
begin
  for i in 1..200 loop
    update public.devices d
       set status = v_statuses[1 + floor(random() * cardinality(v_statuses))::int],
           assigned_server_id = v_servers[1 + floor(random() * 3)::int]
     where d.id = (select id from public.devices order by random() limit 1);
  end loop;
  update public.devices set status = 'disconnected' where device_name like 'phone 1%';
end $$;
select is(pg_temp.reported(), pg_temp.recount(), 'after 200 random single-row and one multi-row update');

select ok((select count(*) from device_assignment.device_counts) > 12,
  'changes are appended, not folded yet');
select device_assignment.fold_device_counts();
select is((select count(*)::int from device_assignment.device_counts),
  (select count(*)::int from (select distinct assigned_server_id, status from public.devices) t),
  'a fold leaves one row per (server, status)');
select is(pg_temp.reported(), pg_temp.recount(), 'after the fold');

set constraints all immediate;
truncate public.devices cascade;
select is(pg_temp.reported(), pg_temp.recount(), 'after a truncate');

select * from finish();
rollback;

-- A device's status has one definition, device_assignment.device_statuses():
-- the rules read it, the literals left in the SQL name statuses it holds, the
-- partial index of linked devices lists what it says, and a value it does not
-- know (one a legacy backend wrote) is left alone.
begin;
\ir reset_fleet.psql
select plan(10);

-- What the machinery relies on, not the list: adding a status changes no test.
select ok(
  'connecting' = any(device_assignment.statuses('waits_for_server'))
  and 'reconnecting' = all(array(select unnest(device_assignment.statuses('holds_session'))
                                 intersect select unnest(device_assignment.statuses('waits_for_server'))))
  and 'reconnecting' <> all(device_assignment.statuses('reportable')),
  'pairing waits for its server; a resume holds a session, waits for its server, and is no report');
select ok(
  'logged_out' = any(device_assignment.statuses('reportable'))
  and 'logged_out' <> all(device_assignment.statuses('stored'))
  and 'disconnected' = any(device_assignment.statuses('keeps_error')),
  'logged_out is a report only, stored as disconnected, which keeps its error');

-- Every status a function of ours or an index predicate names is in the definition.
create temp view named_statuses as
with src as (
  select p.prosrc as text from pg_proc p
   where p.pronamespace in ('public'::regnamespace, 'device_assignment'::regnamespace)
     and p.proname <> 'device_statuses'
), compared as (
  select m[1] as status from src,
    regexp_matches(src.text, '[a-z_]\.status\s*(?:=|<>|is distinct from)\s*''([a-z_]+)''', 'gi') m
), listed as (
  select l[1] as status from src,
    regexp_matches(src.text, '[a-z_]\.status\s*(?:not\s+)?in\s*\(([^)]*)\)', 'gi') m,
    regexp_matches(m[1], '''([a-z_]+)''', 'g') l
), indexed as (
  select l[1] as status from pg_index i,
    regexp_matches(pg_get_expr(i.indpred, i.indrelid), '''([a-z_]+)''::text', 'g') l
   where i.indrelid = 'public.devices'::regclass and pg_get_expr(i.indpred, i.indrelid) ~ 'status'
)
select status from compared union select status from listed union select status from indexed;
select ok((select count(*) >= 3 from named_statuses), 'the SQL names statuses where it acts on one state');
select is(
  (select coalesce(array_agg(status order by status), '{}') from named_statuses
    where status <> all(device_assignment.statuses('stored')) and status <> 'logged_out'),
  '{}'::text[],
  'no function or index names a status the definition lacks');

select is(
  (select pg_get_expr(i.indpred, i.indrelid) from pg_index i
    where i.indexrelid = 'public.devices_linked_by_server'::regclass),
  format('(status = ANY (ARRAY[%s]))',
    (select string_agg(quote_literal(s) || '::text', ', ')
       from unnest(device_assignment.statuses('holds_session')) s)),
  'the index of linked devices lists exactly the statuses that hold a session');

select is(
  (select count(*)::int from device_assignment.device_statuses() s
    where s.stored and s.holds_session and not s.needs_server),
  0, 'a status that holds a session needs a server, so a dead one is failed over');

-- A report the definition does not allow is refused, naming what it allows.
select tests.create_user('owner'), tests.create_server('srv-a');
select tests.create_device('phone', 'owner', 'connecting', 'srv-a', 1);
create function pg_temp.hint_of(p_sql text) returns text language plpgsql as $f$
declare v_hint text;
begin
  execute p_sql;
  return null;
exception when others then
  get stacked diagnostics v_hint = pg_exception_hint;
  return sqlstate || ' ' || sqlerrm || ': ' || v_hint;
end $f$;
select is(pg_temp.hint_of($$select public.report_device_status(tests.id('phone'), tests.id('srv-a'), 1, 'reconnecting')$$),
  'PT400 invalid_argument: One of '
    || array_to_string(device_assignment.statuses('reportable'), ', ') || '.',
  'reconnecting is not a report, and the refusal names what is');
select public.report_device_status(tests.id('phone'), tests.id('srv-a'), 1, 'error', 'boom');
select is((select last_error from public.devices where id = tests.id('phone')),
  'server_error', 'a status that keeps an error keeps the code of the report');

-- A legacy value survives: the rules leave it alone, its owner sees it as not connecting.
update public.devices set status = 'qr_ready', last_error = null
 where id = tests.id('phone');
select public.run_assignment_maintenance();
select is((select status from public.devices where id = tests.id('phone')),
  'qr_ready', 'a legacy status is kept through a maintenance pass');
select tests.as_user('owner');
select is(public.get_device_qr(tests.id('phone')) ->> 'status', 'not_connecting',
  'its owner sees a legacy status as not connecting');
select tests.as_system();

select * from finish();
rollback;

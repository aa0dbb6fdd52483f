-- A server's error text is for operators only. Owners read their devices' rows
-- (`supabase.from('devices').select('last_error')`), and a server's text may
-- hold up to 1,000 characters with internal addresses, so:
--
--   * devices.last_error is a code (qr_timeout, logged_out,
--     max_reassignments_exceeded, disconnected, server_error), which
--     device_assignment.error_code, the one mapping, decides;
--   * device_assignment.device_error_text keeps the text, read by
--     assignment_health (operators) and nothing else;
--   * a trigger on devices.last_error is the one writer of both, so every path
--     that sets the column (report_device_status, assign_devices, move_devices,
--     publish_device_qr, restart_pairing, and a legacy backend writing the table
--     directly with the secret key) splits code from text the same way, and
--     clearing the code clears the text.

create table "device_assignment"."device_error_text" (
  "device_id"          uuid                     not null,
  "error_text"         text                     not null,
  "reported_by_server" uuid,
  "reported_at"        timestamp with time zone not null default now(),
  constraint "device_error_text_pkey" primary key (device_id),
  constraint "device_error_text_device_id_fkey" foreign key (device_id) references public.devices(id) on delete cascade deferrable initially deferred
);

alter table "device_assignment"."device_error_text"
  enable row level security;

comment on column "device_assignment"."device_error_text"."reported_by_server" is 'The server the device was assigned to when the text was written; null for the bundle''s own text.';

comment on table "device_assignment"."device_error_text" is 'The text behind each device''s last_error code, for operators (assignment_health); users never read it.';

revoke all on table device_assignment.device_error_text from public, anon, authenticated, service_role;

-- The one writer ----------------------------------------------------------------------------
-- A trigger, because the column has writers in five functions and, on an
-- upgraded project, in legacy backends that update the
-- table directly with the secret key: every one of them passes through here.
-- Security definer: a direct write runs the trigger as the writer's role,
-- which has no grant on the text table.
create or replace function device_assignment.keep_error_text_private()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code text;
begin
  v_code := device_assignment.error_code(new.status, new.last_error);
  if new.last_error is distinct from v_code then
    insert into device_assignment.device_error_text as t
      (device_id, error_text, reported_by_server, reported_at)
    values (new.id, left(new.last_error, 1000), new.assigned_server_id, now())
    on conflict (device_id) do update
      set error_text = excluded.error_text,
          reported_by_server = excluded.reported_by_server,
          reported_at = excluded.reported_at;
    new.last_error := v_code;
  elsif tg_op = 'INSERT' or new.last_error is distinct from old.last_error then
    -- A new code with no text (logged_out), or no error: no older text stays
    -- beside it. A code written back unchanged (a move keeps the device's
    -- error) keeps its text.
    delete from device_assignment.device_error_text t where t.device_id = new.id;
  end if;
  return new;
end;
$$;

-- Upgrade -----------------------------------------------------------------------------------
-- Rows that still hold text (written before the trigger existed, or while it
-- was disabled) are written back through the trigger, which moves the
-- text and leaves the code. A function, so the pgTAP suite runs the very
-- statement the upgrade runs.
create or replace function device_assignment.hide_error_texts()
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_moved integer;
begin
  perform set_config('device_assignment.hide_error_texts', 'on', true);
  update public.devices d
     set last_error = d.last_error
   where d.last_error is distinct from device_assignment.error_code(d.status, d.last_error);
  get diagnostics v_moved = row_count;
  perform set_config('device_assignment.hide_error_texts', 'off', true);
  return v_moved;
end;
$$;

create trigger devices_keep_error_text_private
  before insert on public.devices
  for each row
  when (new.last_error is not null)
  execute function device_assignment.keep_error_text_private();

-- An update fires it only where there is something to do: the error changed,
-- or the upgrade rewrites rows that still hold text (hide_error_texts). Every
-- move writes last_error back unchanged, and a trigger call per moved row cost
-- a claim of 100 devices a quarter of its time. (The condition runs as the
-- caller, so it calls no function of ours.)
create trigger devices_keep_changed_error_text_private
  before update of last_error on public.devices
  for each row
  when (new.last_error is distinct from old.last_error
        or current_setting('device_assignment.hide_error_texts', true) = 'on')
  execute function device_assignment.keep_error_text_private();

-- Who may call what: nobody but the owner, unless granted here.
revoke all on function
  device_assignment.keep_error_text_private(),
  device_assignment.hide_error_texts()
from public, anon, authenticated, service_role;

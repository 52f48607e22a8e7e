-- A slot comes back only when a session that was handed out to a user goes away.
-- Status is not the test: a warm (never allocated) session whose container died is
-- marked DYING before its row is deleted, and counting that as a freed slot made
-- the host show one free slot more than it had warm sessions. allocated_at is set
-- by the assign that takes the slot and never cleared.
CREATE OR REPLACE FUNCTION release_slot_on_session_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.allocated_at IS NOT NULL THEN
        UPDATE hosts SET free_slots = free_slots + 1
         WHERE id = OLD.host_id AND free_slots < capacity;
    END IF;
    RETURN OLD;
END $$;

CREATE OR REPLACE FUNCTION notify_session_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row sessions%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
        PERFORM pg_notify('host_' || row.host_id,
            json_build_object('kind', 'session', 'id', row.id, 'status', 'DELETED')::text);
        IF row.allocated_at IS NOT NULL THEN
            PERFORM pg_notify('scaling',
                json_build_object('kind', 'slot_freed', 'host', row.host_id)::text);
        END IF;
        RETURN OLD;
    END IF;
    row := NEW;
    -- The host acts on allocations and on sessions that must die; other moves are its own.
    IF row.status IN ('ALLOCATED', 'DYING')
       AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM row.status) THEN
        PERFORM pg_notify('host_' || row.host_id,
            json_build_object('kind', 'session', 'id', row.id, 'status', row.status)::text);
    END IF;
    RETURN NEW;
END $$;

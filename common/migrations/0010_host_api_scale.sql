-- Hosts no longer listen: they reach the control plane's host API, whose
-- replicas each listen once on host_events. The per-host channels lose their
-- last listener, so the triggers stop paying for a notification nobody hears.
CREATE OR REPLACE FUNCTION notify_session_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row sessions%ROWTYPE;
    hint text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
        hint := json_build_object('kind', 'session', 'host', row.host_id, 'id', row.id, 'status', 'DELETED')::text;
        PERFORM pg_notify('host_events', hint);
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
        hint := json_build_object('kind', 'session', 'host', row.host_id, 'id', row.id, 'status', row.status,
                                  'user_id', row.user_id, 'token_sha256', row.token_sha256)::text;
        PERFORM pg_notify('host_events', hint);
    -- A re-issued token (the client repeated its assign) replaces the old one at once.
    ELSIF TG_OP = 'UPDATE' AND row.status IN ('ALLOCATED', 'CONNECTING')
       AND OLD.token_sha256 IS DISTINCT FROM row.token_sha256 THEN
        PERFORM pg_notify('host_events',
            json_build_object('kind', 'session', 'host', row.host_id, 'id', row.id, 'status', row.status,
                              'user_id', row.user_id, 'token_sha256', row.token_sha256)::text);
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION notify_host_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('host_events',
            json_build_object('kind', 'host', 'host', OLD.id, 'status', 'DELETED')::text);
        PERFORM pg_notify('scaling',
            json_build_object('kind', 'host', 'id', OLD.id, 'region', OLD.region, 'status', 'DELETED')::text);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('host_events',
            json_build_object('kind', 'host', 'host', NEW.id, 'status', NEW.status)::text);
        PERFORM pg_notify('scaling',
            json_build_object('kind', 'host', 'id', NEW.id, 'region', NEW.region, 'status', NEW.status)::text);
    END IF;
    RETURN NEW;
END $$;

-- The assign's host pick walks this index in its order (per region: fullest
-- first) and stops at the first host that qualifies, so its cost does not
-- grow with the number of hosts.
CREATE INDEX hosts_pick ON hosts (region, free_slots, id) WHERE status = 'ACTIVE' AND free_slots > 0;

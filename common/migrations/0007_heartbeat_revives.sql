-- A heartbeat is proof of life: an UNREACHABLE host that beats again is ACTIVE,
-- whoever writes the heartbeat (the host today, the control plane later).
CREATE FUNCTION revive_on_heartbeat() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'UNREACHABLE'
       AND NEW.status = 'UNREACHABLE'
       AND NEW.last_heartbeat_at IS DISTINCT FROM OLD.last_heartbeat_at THEN
        NEW.status := 'ACTIVE';
        NEW.status_reason := NULL;
        NEW.unreachable_since := NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER hosts_revive_on_heartbeat
    BEFORE UPDATE OF last_heartbeat_at ON hosts
    FOR EACH ROW EXECUTE FUNCTION revive_on_heartbeat();

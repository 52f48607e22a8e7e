-- Scaling support: idle tracking for scale-down, the deploy release signal,
-- and the index the assign pick walks.

ALTER TABLE hosts ADD COLUMN empty_since timestamptz;
ALTER TABLE deploys ADD COLUMN released_at timestamptz;

-- A host is "empty" when no slot is handed out. The scaler only scales down
-- hosts that have been empty for the region's grace period.
CREATE FUNCTION track_host_emptiness() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.free_slots = NEW.capacity THEN
        NEW.empty_since := coalesce(CASE WHEN TG_OP = 'UPDATE' THEN OLD.empty_since END, now());
    ELSE
        NEW.empty_since := NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER hosts_track_emptiness
    BEFORE INSERT OR UPDATE OF free_slots, capacity ON hosts
    FOR EACH ROW EXECUTE FUNCTION track_host_emptiness();

UPDATE hosts SET empty_since = now() WHERE free_slots = capacity;

CREATE INDEX sessions_waiting_by_runtime ON sessions (runtime, host_id) WHERE status = 'WAITING';
CREATE INDEX hosts_launch ON hosts (launch_id) WHERE launch_id IS NOT NULL;

-- Control-plane replicas remember host credentials they have checked; a
-- credential taken away (an operator's `host-token` for a registered host
-- clears it) must be forgotten by every replica at once, so its change is
-- announced like a status move. Hosts' streams ignore this kind.
CREATE FUNCTION notify_credential_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('host_events', json_build_object('kind', 'credential', 'host', NEW.id)::text);
    RETURN NEW;
END $$;

CREATE TRIGGER hosts_credential_notify
    AFTER UPDATE OF credential_sha256 ON hosts
    FOR EACH ROW WHEN (OLD.credential_sha256 IS DISTINCT FROM NEW.credential_sha256)
    EXECUTE FUNCTION notify_credential_change();

-- The host API: hosts reach the control plane over HTTPS, never the database.
--
-- Identity. A launch carries a one-use bootstrap token in its user data (EC2
-- takes one user data per RunInstances call, so the token is per launch; it
-- registers each instance of that launch once). A host started by hand gets
-- its own token on its row. Registration replaces it with a host credential.
-- Only SHA-256 hashes are stored.
ALTER TABLE launches
    ADD COLUMN bootstrap_sha256 text CHECK (bootstrap_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN bootstrap_expires_at timestamptz;
ALTER TABLE hosts
    ADD COLUMN bootstrap_sha256 text CHECK (bootstrap_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN bootstrap_expires_at timestamptz,
    ADD COLUMN credential_sha256 text CHECK (credential_sha256 ~ '^[0-9a-f]{64}$');
CREATE UNIQUE INDEX hosts_credential ON hosts (credential_sha256) WHERE credential_sha256 IS NOT NULL;

-- Events for hosts go to one channel, which each control-plane replica
-- listens on once (a LISTEN per host made PostgreSQL wake every host's
-- backend on every commit); the payload names the host.
CREATE OR REPLACE FUNCTION notify_session_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row sessions%ROWTYPE;
    hint text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
        hint := json_build_object('kind', 'session', 'host', row.host_id, 'id', row.id, 'status', 'DELETED')::text;
        PERFORM pg_notify('host_' || row.host_id, hint);
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
        PERFORM pg_notify('host_' || row.host_id, hint);
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

DROP TRIGGER sessions_notify ON sessions;
CREATE TRIGGER sessions_notify
    AFTER INSERT OR UPDATE OF status, token_sha256 OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION notify_session_change();

CREATE OR REPLACE FUNCTION notify_host_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('host_' || OLD.id,
            json_build_object('kind', 'host', 'id', OLD.id, 'status', 'DELETED')::text);
        PERFORM pg_notify('host_events',
            json_build_object('kind', 'host', 'host', OLD.id, 'status', 'DELETED')::text);
        PERFORM pg_notify('scaling',
            json_build_object('kind', 'host', 'id', OLD.id, 'region', OLD.region, 'status', 'DELETED')::text);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('host_' || NEW.id,
            json_build_object('kind', 'host', 'id', NEW.id, 'status', NEW.status)::text);
        PERFORM pg_notify('host_events',
            json_build_object('kind', 'host', 'host', NEW.id, 'status', NEW.status)::text);
        PERFORM pg_notify('scaling',
            json_build_object('kind', 'host', 'id', NEW.id, 'region', NEW.region, 'status', NEW.status)::text);
    END IF;
    RETURN NEW;
END $$;

-- Berth schema, version 1. Never edit this file once applied: add a new migration instead.
--
-- Rows are the truth; NOTIFY (fired by the triggers at the bottom) only carries hints.
-- Statuses are enums so a typo cannot invent a state.

CREATE TYPE host_status AS ENUM
    ('LAUNCHING', 'PRE_CONNECTION', 'ACTIVE', 'DRAINING', 'TERMINATING', 'TERMINATED');
CREATE TYPE session_status AS ENUM
    ('WAITING', 'ALLOCATED', 'CONNECTING', 'RUNNING', 'DYING');
CREATE TYPE image_status AS ENUM ('CANDIDATE', 'CURRENT', 'RETIRED', 'FAILED');
CREATE TYPE launch_state AS ENUM ('PENDING', 'LAUNCHED', 'FAILED');
CREATE TYPE deploy_state AS ENUM ('BUFFERING', 'READY', 'SWAPPED', 'FAILED');

CREATE TABLE regions (
    name                     text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    enabled                  boolean NOT NULL DEFAULT true,
    target_free_slots        integer NOT NULL DEFAULT 0 CHECK (target_free_slots >= 0),
    max_hosts                integer NOT NULL DEFAULT 10 CHECK (max_hosts >= 0),
    -- In preference order; the first with capacity wins, the rest are fallbacks.
    instance_types           text[] NOT NULL DEFAULT '{}',
    -- Each selector is {"id": "subnet-…"} or {"tags": {"k": "v"}}; tried in order.
    subnet_selectors         jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(subnet_selectors) = 'array'),
    security_group_selectors jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(security_group_selectors) = 'array'),
    iam_instance_profile     text,
    scale_down_grace_s       integer NOT NULL DEFAULT 600 CHECK (scale_down_grace_s >= 0),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instance_types (
    name       text PRIMARY KEY,
    vcpus      integer NOT NULL CHECK (vcpus > 0),
    gpus       integer NOT NULL DEFAULT 0 CHECK (gpus >= 0),
    memory_mib integer NOT NULL CHECK (memory_mib > 0),
    -- Sessions one host of this type runs. Whist's rule for GPU types was
    -- min(gpus*3, vcpus/4); CPU types vcpus/2 unless set explicitly.
    capacity   integer NOT NULL CHECK (capacity > 0)
);

CREATE TABLE images (
    region       text NOT NULL REFERENCES regions (name) ON DELETE CASCADE,
    image_id     text NOT NULL,
    client_sha   text NOT NULL,
    status       image_status NOT NULL DEFAULT 'CANDIDATE',
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    PRIMARY KEY (region, image_id)
);
-- A region swaps images atomically: at most one CURRENT at any instant.
CREATE UNIQUE INDEX images_one_current_per_region ON images (region) WHERE status = 'CURRENT';

CREATE TABLE launches (
    id            uuid PRIMARY KEY,
    region        text NOT NULL,
    instance_type text NOT NULL,
    image_id      text NOT NULL,
    count         integer NOT NULL CHECK (count > 0),
    state         launch_state NOT NULL DEFAULT 'PENDING',
    instance_ids  text[] NOT NULL DEFAULT '{}',
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX launches_pending ON launches (region) WHERE state = 'PENDING';

CREATE TABLE hosts (
    id                text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,48}$'),
    region            text NOT NULL,
    image_id          text NOT NULL,
    client_sha        text NOT NULL DEFAULT '',
    instance_type     text NOT NULL,
    public_ip         inet,
    private_ip        inet,
    api_port          integer CHECK (api_port BETWEEN 1 AND 65535),
    cert_sha256       text CHECK (cert_sha256 ~ '^[0-9a-f]{64}$'),
    capacity          integer NOT NULL CHECK (capacity >= 0),
    free_slots        integer NOT NULL CHECK (free_slots >= 0 AND free_slots <= capacity),
    status            host_status NOT NULL DEFAULT 'LAUNCHING',
    status_reason     text,
    launch_id         uuid,
    launched_at       timestamptz NOT NULL DEFAULT now(),
    registered_at     timestamptz,
    last_heartbeat_at timestamptz,
    load_average      real,
    session_count     integer,
    draining_since    timestamptz,
    terminated_at     timestamptz,
    host_version      text
);
CREATE INDEX hosts_region_status ON hosts (region, status);

CREATE TABLE runtimes (
    name           text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    description    text NOT NULL DEFAULT '',
    image          text NOT NULL,
    -- [{"container_port": 8080, "protocol": "tcp"}, …]
    ports          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(ports) = 'array'),
    env            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(env) = 'object'),
    memory_mib     integer NOT NULL DEFAULT 512 CHECK (memory_mib > 0),
    cpu_shares     integer NOT NULL DEFAULT 1024 CHECK (cpu_shares >= 2),
    shm_mib        integer NOT NULL DEFAULT 64 CHECK (shm_mib > 0),
    needs_tty      boolean NOT NULL DEFAULT false,
    needs_uinput   boolean NOT NULL DEFAULT false,
    -- {"http": {"port": 8080, "path": "/ready"}} | {"tcp": {"port": 8080}} | {"file": {"path": "ready"}}
    readiness      jsonb NOT NULL DEFAULT '{"tcp": {"port": 8080}}' CHECK (jsonb_typeof(readiness) = 'object'),
    ready_timeout_s integer NOT NULL DEFAULT 20 CHECK (ready_timeout_s > 0),
    idle_timeout_s integer CHECK (idle_timeout_s IS NULL OR idle_timeout_s > 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id                uuid PRIMARY KEY,
    host_id           text NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    runtime           text NOT NULL,
    status            session_status NOT NULL DEFAULT 'WAITING',
    status_reason     text,
    user_id           text,
    client_session_id text,
    -- Lowercase hex SHA-256 of the session token; the token itself is never stored.
    token_sha256      text CHECK (token_sha256 IS NULL OR token_sha256 ~ '^[0-9a-f]{64}$'),
    container_id      text,
    tty               integer,
    ports             jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(ports) = 'array'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    allocated_at      timestamptz,
    connecting_at     timestamptz,
    ready_at          timestamptz,
    last_activity_at  timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- An allocated session always has an owner and a token.
    CHECK (status IN ('WAITING') OR (user_id IS NOT NULL AND token_sha256 IS NOT NULL) OR status = 'DYING')
);
CREATE INDEX sessions_host_status ON sessions (host_id, status);
CREATE INDEX sessions_user ON sessions (user_id) WHERE user_id IS NOT NULL;
-- Assign is idempotent per (user, client session id).
CREATE UNIQUE INDEX sessions_user_client_session
    ON sessions (user_id, client_session_id) WHERE client_session_id IS NOT NULL;
-- Two sessions on one host never share a TTY.
CREATE UNIQUE INDEX sessions_host_tty ON sessions (host_id, tty) WHERE tty IS NOT NULL;

CREATE TABLE deploys (
    id          uuid PRIMARY KEY,
    region      text NOT NULL REFERENCES regions (name) ON DELETE CASCADE,
    image_id    text NOT NULL,
    client_sha  text NOT NULL,
    state       deploy_state NOT NULL DEFAULT 'BUFFERING',
    error       text,
    deadline_at timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- One roll-out at a time per region.
CREATE UNIQUE INDEX deploys_one_active_per_region ON deploys (region) WHERE state IN ('BUFFERING', 'READY');

-- Per-user concurrent-session limits; the row with user_id '*' is the default.
CREATE TABLE limits (
    user_id      text PRIMARY KEY,
    max_sessions integer NOT NULL CHECK (max_sessions >= 0)
);
INSERT INTO limits (user_id, max_sessions) VALUES ('*', 3);

-- Append-only audit of state changes.
CREATE TABLE events (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL,
    subject text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'
);

-- ---------------------------------------------------------------------------
-- NOTIFY triggers. Channels: host_<id>, scaling, config. Payloads are small JSON
-- hints; listeners re-read the rows (and re-query everything after a reconnect,
-- because notifications sent while disconnected are lost).

CREATE FUNCTION notify_session_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row sessions%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
        PERFORM pg_notify('host_' || row.host_id,
            json_build_object('kind', 'session', 'id', row.id, 'status', 'DELETED')::text);
        IF row.status <> 'WAITING' THEN
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

CREATE TRIGGER sessions_notify
    AFTER INSERT OR UPDATE OF status OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION notify_session_change();

-- A slot comes back exactly when an allocated session's row goes away. Doing it in
-- the trigger makes teardown idempotent (a row is deleted once) and never frees a
-- slot for a warm session that was never handed out.
CREATE FUNCTION release_slot_on_session_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'WAITING' THEN
        UPDATE hosts SET free_slots = free_slots + 1
         WHERE id = OLD.host_id AND free_slots < capacity;
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER sessions_release_slot
    AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION release_slot_on_session_delete();

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER sessions_touch BEFORE UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER regions_touch BEFORE UPDATE ON regions
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER runtimes_touch BEFORE UPDATE ON runtimes
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER launches_touch BEFORE UPDATE ON launches
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER deploys_touch BEFORE UPDATE ON deploys
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE FUNCTION notify_host_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('host_' || OLD.id,
            json_build_object('kind', 'host', 'id', OLD.id, 'status', 'DELETED')::text);
        PERFORM pg_notify('scaling',
            json_build_object('kind', 'host', 'id', OLD.id, 'region', OLD.region, 'status', 'DELETED')::text);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('host_' || NEW.id,
            json_build_object('kind', 'host', 'id', NEW.id, 'status', NEW.status)::text);
        PERFORM pg_notify('scaling',
            json_build_object('kind', 'host', 'id', NEW.id, 'region', NEW.region, 'status', NEW.status)::text);
    END IF;
    RETURN NEW;
END $$;

-- Only status moves notify: free_slots changes on every assign and a NOTIFY per
-- assign would serialize commits on the notification queue lock.
CREATE TRIGGER hosts_notify
    AFTER INSERT OR UPDATE OF status OR DELETE ON hosts
    FOR EACH ROW EXECUTE FUNCTION notify_host_change();

CREATE FUNCTION notify_config_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        key := to_jsonb(OLD) ->> TG_ARGV[0];
    ELSE
        key := to_jsonb(NEW) ->> TG_ARGV[0];
    END IF;
    PERFORM pg_notify('config',
        json_build_object('kind', TG_TABLE_NAME, 'key', key, 'op', TG_OP)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER regions_notify AFTER INSERT OR UPDATE OR DELETE ON regions
    FOR EACH ROW EXECUTE FUNCTION notify_config_change('name');
CREATE TRIGGER runtimes_notify AFTER INSERT OR UPDATE OR DELETE ON runtimes
    FOR EACH ROW EXECUTE FUNCTION notify_config_change('name');
CREATE TRIGGER instance_types_notify AFTER INSERT OR UPDATE OR DELETE ON instance_types
    FOR EACH ROW EXECUTE FUNCTION notify_config_change('name');
CREATE TRIGGER images_notify AFTER INSERT OR UPDATE OR DELETE ON images
    FOR EACH ROW EXECUTE FUNCTION notify_config_change('region');

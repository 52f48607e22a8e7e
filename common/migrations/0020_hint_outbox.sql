-- A notifying commit takes one database-wide lock and holds it through its
-- WAL flush, so notifying transactions commit one at a time. Every assign
-- and every session end notified: under load the assigns queued on that lock
-- (its waits outnumbered all others), not on the CPU. Session hints now go
-- to this outbox inside the writing transaction, and a control-plane replica
-- publishes them in batches (publish_hints): one notifying commit per batch.
--
-- Unlogged: it is not written to the WAL. A crash empties it, and the hints
-- it held are lost as a dropped LISTEN connection loses them; the replicas
-- re-read everything when their LISTEN connection comes back.
CREATE UNLOGGED TABLE hint_outbox (
    id      bigserial PRIMARY KEY,
    channel text NOT NULL,
    payload text NOT NULL
);

-- Publishes up to p_limit queued hints in the order they were queued, and
-- answers how many (-1: another replica is publishing; it takes these too).
-- One publisher at a time, so batches are delivered in the order taken. Rows
-- are deleted by id: a row queued with a lower id by a transaction that
-- commits later is published by a later batch, never dropped.
CREATE FUNCTION publish_hints(p_limit integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    hint record;
    published bigint[] := '{}';
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('berth.hint_outbox', 0)) THEN
        RETURN -1;
    END IF;
    FOR hint IN SELECT id, channel, payload FROM hint_outbox ORDER BY id LIMIT p_limit LOOP
        PERFORM pg_notify(hint.channel, hint.payload);
        published := published || hint.id;
    END LOOP;
    DELETE FROM hint_outbox WHERE id = ANY(published);
    RETURN cardinality(published);
END $$;

CREATE OR REPLACE FUNCTION notify_session_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row sessions%ROWTYPE;
    hint text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
        hint := json_build_object('kind', 'session', 'host', row.host_id, 'id', row.id, 'status', 'DELETED')::text;
        INSERT INTO hint_outbox (channel, payload) VALUES ('host_events', hint);
        IF row.allocated_at IS NOT NULL THEN
            INSERT INTO hint_outbox (channel, payload)
            VALUES ('scaling', json_build_object('kind', 'slot_freed', 'host', row.host_id)::text);
        END IF;
        RETURN OLD;
    END IF;
    row := NEW;
    -- The host acts on allocations and on sessions that must die; other moves
    -- are its own. A re-issued token (the client repeated its assign)
    -- replaces the old one at once.
    IF (row.status IN ('ALLOCATED', 'DYING') AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM row.status))
       OR (TG_OP = 'UPDATE' AND row.status IN ('ALLOCATED', 'CONNECTING')
           AND OLD.token_sha256 IS DISTINCT FROM row.token_sha256) THEN
        INSERT INTO hint_outbox (channel, payload)
        VALUES ('host_events',
                json_build_object('kind', 'session', 'host', row.host_id, 'id', row.id, 'status', row.status,
                                  'user_id', row.user_id, 'token_sha256', row.token_sha256)::text);
    END IF;
    RETURN NEW;
END $$;

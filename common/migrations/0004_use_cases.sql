-- The other use cases: runtimes with an init call and a per-user volume,
-- sealed init answers, and a record of how each user's session ended (rows are
-- deleted at teardown, but a user asking "where did my session go?" must get
-- an answer such as REAPED with its reason).

-- {"port": 8081, "path": "/init"}: POSTed once the app is ready; its JSON answer
-- is sealed with the session token and returned to the owner only.
ALTER TABLE runtimes ADD COLUMN init jsonb
    CHECK (init IS NULL OR jsonb_typeof(init) = 'object');
-- {"path": "/data", "uid": 1000, "gid": 1000}: the user's own directory under the
-- host's BERTH_USER_DATA_ROOT, mounted at path in every session of that user.
ALTER TABLE runtimes ADD COLUMN user_volume jsonb
    CHECK (user_volume IS NULL OR jsonb_typeof(user_volume) = 'object');

-- nonce || ciphertext of the init answer, under a key derived from the token.
ALTER TABLE sessions ADD COLUMN init_sealed bytea;

CREATE TYPE session_outcome AS ENUM ('REAPED', 'DELETED', 'FAILED', 'ENDED');
-- Set when a session starts dying; the first cause recorded wins.
ALTER TABLE sessions ADD COLUMN outcome session_outcome;

CREATE TABLE session_history (
    id                uuid PRIMARY KEY,
    user_id           text NOT NULL,
    client_session_id text,
    runtime           text NOT NULL,
    host_id           text NOT NULL,
    outcome           session_outcome NOT NULL,
    reason            text NOT NULL,
    created_at        timestamptz NOT NULL,
    ended_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_history_user ON session_history (user_id, ended_at DESC);
CREATE INDEX session_history_ended ON session_history (ended_at);

-- Every way a user's session row goes (teardown, resync, a host row deleted
-- with ON DELETE CASCADE) leaves its ending behind.
CREATE FUNCTION record_session_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.user_id IS NOT NULL THEN
        INSERT INTO session_history
            (id, user_id, client_session_id, runtime, host_id, outcome, reason, created_at)
        VALUES (OLD.id, OLD.user_id, OLD.client_session_id, OLD.runtime, OLD.host_id,
                coalesce(OLD.outcome, 'ENDED'), coalesce(OLD.status_reason, 'the session ended'),
                OLD.created_at)
        ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER sessions_record_end
    AFTER DELETE ON sessions FOR EACH ROW EXECUTE FUNCTION record_session_end();

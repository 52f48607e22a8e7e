-- The operator surface: an append-only audit trail and the fleet's sampled
-- history (the dashboard's charts).
--
-- Audit rows say who did what to which target, when, from where, and how it
-- came out. They never hold a token. Rows are never changed; only the
-- retention sweep deletes, and it must say so in its own transaction
-- (SET LOCAL berth.audit_prune = 'on'), so a stray DELETE fails loudly.
CREATE TABLE audit (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor_kind text NOT NULL CHECK (actor_kind IN ('operator', 'user', 'host', 'system')),
    actor      text NOT NULL CHECK (length(actor) BETWEEN 1 AND 256),
    action     text NOT NULL CHECK (action ~ '^[a-z][a-z_.]{0,63}$'),
    target     text NOT NULL DEFAULT '' CHECK (length(target) <= 256),
    region     text,
    address    text,
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    detail     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object')
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_actor ON audit (actor, id);
CREATE INDEX audit_action ON audit (action, id);
CREATE INDEX audit_target ON audit (target, id);
-- The charts count each region's assigns per sample interval.
CREATE INDEX audit_region_action_at ON audit (region, action, at);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('berth.audit_prune', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only (% refused)', TG_OP;
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();

-- One sample per region per interval, whichever replica takes it first.
CREATE TABLE fleet_history (
    region     text NOT NULL,
    at         timestamptz NOT NULL,
    hosts      integer NOT NULL,
    capacity   integer NOT NULL,
    free_slots integer NOT NULL,
    sessions   integer NOT NULL,
    assigns    integer NOT NULL,
    PRIMARY KEY (region, at)
);
CREATE INDEX fleet_history_at ON fleet_history (at);

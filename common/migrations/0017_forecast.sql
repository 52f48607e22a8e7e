-- Demand-aware warm buffers. A region keeps either a fixed buffer of
-- target_free_slots ('buffer', what every region did before) or a buffer sized
-- from its own demand history ('forecast'): arrivals expected over the next
-- forecast_horizon_s (the boot-to-registered delay it plans for), from the
-- same time window of its past forecast_history_periods periods of
-- forecast_period_s (a day by default; days count only against days of the
-- same kind, weekday or weekend, UTC), smoothed over forecast_bucket_s, and
-- from the last forecast_recent_s; enough free slots to serve them at
-- forecast_hit_rate. On 'forecast', target_free_slots is a floor.
ALTER TABLE regions
    ADD COLUMN policy text NOT NULL DEFAULT 'buffer' CHECK (policy IN ('buffer', 'forecast')),
    ADD COLUMN forecast_hit_rate double precision NOT NULL DEFAULT 0.995
        CHECK (forecast_hit_rate >= 0.5 AND forecast_hit_rate < 1),
    ADD COLUMN forecast_horizon_s integer NOT NULL DEFAULT 150
        CHECK (forecast_horizon_s BETWEEN 1 AND 3600),
    ADD COLUMN forecast_period_s integer NOT NULL DEFAULT 86400
        CHECK (forecast_period_s BETWEEN 10 AND 604800),
    ADD COLUMN forecast_history_periods integer NOT NULL DEFAULT 7
        CHECK (forecast_history_periods BETWEEN 1 AND 28),
    ADD COLUMN forecast_bucket_s integer NOT NULL DEFAULT 900
        CHECK (forecast_bucket_s BETWEEN 0 AND 86400),
    ADD COLUMN forecast_recent_s integer NOT NULL DEFAULT 300
        CHECK (forecast_recent_s BETWEEN 5 AND 86400),
    -- The history the forecast reads is kept 15 days (assigns_kept_days below).
    ADD CONSTRAINT regions_forecast_history_kept
        CHECK (forecast_period_s::bigint * forecast_history_periods <= 14 * 86400);

-- One row per assign: when and where demand arrived, and when the session
-- ended. Session rows are deleted at teardown and session_history has neither
-- the region nor the assign time, so the forecast and `trace export` read
-- this. Written by triggers, so every path that allocates or ends a session
-- is covered; kept 15 days (pruned by the region controller).
CREATE TABLE assigns (
    session_id  uuid PRIMARY KEY,
    region      text NOT NULL,
    runtime     text NOT NULL,
    assigned_at timestamptz NOT NULL,
    ended_at    timestamptz
);
-- Every forecast window is a range count on this.
CREATE INDEX assigns_region_time ON assigns (region, assigned_at);

CREATE FUNCTION record_assign() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The assign has just taken a slot of this host: its row is there.
    INSERT INTO assigns (session_id, region, runtime, assigned_at)
    SELECT NEW.id, h.region, NEW.runtime, coalesce(NEW.allocated_at, now())
      FROM hosts h WHERE h.id = NEW.host_id
    ON CONFLICT (session_id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_record_assign
    AFTER UPDATE OF status ON sessions FOR EACH ROW
    WHEN (OLD.status = 'WAITING' AND NEW.status <> 'WAITING' AND NEW.user_id IS NOT NULL)
    EXECUTE FUNCTION record_assign();

CREATE FUNCTION record_assign_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE assigns SET ended_at = now() WHERE session_id = OLD.id AND ended_at IS NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_record_assign_end
    AFTER DELETE ON sessions FOR EACH ROW
    WHEN (OLD.user_id IS NOT NULL)
    EXECUTE FUNCTION record_assign_end();

-- Sessions handed out before this migration are demand too.
INSERT INTO assigns (session_id, region, runtime, assigned_at)
SELECT s.id, h.region, s.runtime, s.allocated_at
  FROM sessions s JOIN hosts h ON h.id = s.host_id
 WHERE s.user_id IS NOT NULL AND s.allocated_at IS NOT NULL
ON CONFLICT (session_id) DO NOTHING;

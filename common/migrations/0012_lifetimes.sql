-- Lifetimes a user can predict. A runtime may cap how long a session lives
-- (`max_lifetime_s`, counted from when it started RUNNING) and warn ahead of
-- an idle or lifetime end (`idle_warning_s`). The host tells the control
-- plane when it warns; `ends_at`/`end_warning` let the session's owner see it.
ALTER TABLE runtimes
    ADD COLUMN max_lifetime_s integer CHECK (max_lifetime_s IS NULL OR max_lifetime_s > 0),
    ADD COLUMN idle_warning_s integer CHECK (idle_warning_s IS NULL OR idle_warning_s > 0);
ALTER TABLE sessions
    ADD COLUMN ends_at timestamptz,
    ADD COLUMN end_warning text;
ALTER TYPE session_outcome ADD VALUE IF NOT EXISTS 'LIFETIME';

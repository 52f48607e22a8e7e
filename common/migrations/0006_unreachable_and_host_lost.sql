-- Liveness by evidence: a host that stops heartbeating is UNREACHABLE (no new
-- assigns, its warm slots not counted, its running sessions left alone) before it
-- is ever terminated; sessions that end because their host is gone say HOST_LOST.
-- New enum values cannot be used in the transaction that adds them, so their
-- uses live in the next migration.
ALTER TYPE host_status ADD VALUE IF NOT EXISTS 'UNREACHABLE';
ALTER TYPE session_outcome ADD VALUE IF NOT EXISTS 'HOST_LOST';
ALTER TABLE hosts ADD COLUMN unreachable_since timestamptz;

-- Where a runtime's sessions may send traffic besides their own container:
-- 'open' (the outside, never the host, another session or the metadata
-- range) or 'none' (a bridge with no route out).
ALTER TABLE runtimes ADD COLUMN egress text NOT NULL DEFAULT 'open'
    CHECK (egress IN ('open', 'none'));

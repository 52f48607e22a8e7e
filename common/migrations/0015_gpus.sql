-- GPU sessions. A runtime asks for GPUs per session ('0', a count, or 'all'
-- of a host's) given through Docker's nvidia device request or a Container
-- Device Interface kind ('cdi:nvidia.com/gpu'). A host says how many GPUs it
-- has when it registers; the assign never picks a host with fewer than a
-- runtime needs. An instance type's capacity may be left to the rule Whist
-- used: min(gpus × 3, vcpus ÷ 4) for GPU types, vcpus ÷ 2 otherwise.
ALTER TABLE runtimes
    ADD COLUMN gpus text NOT NULL DEFAULT '0' CHECK (gpus ~ '^(0|[1-9][0-9]?|all)$'),
    ADD COLUMN gpu_driver text NOT NULL DEFAULT 'nvidia'
        CHECK (gpu_driver = 'nvidia' OR gpu_driver ~ '^cdi:[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$');
ALTER TABLE hosts ADD COLUMN gpus integer NOT NULL DEFAULT 0 CHECK (gpus >= 0);
ALTER TABLE instance_types ALTER COLUMN capacity DROP NOT NULL;
CREATE FUNCTION instance_capacity(capacity integer, vcpus integer, gpus integer)
    RETURNS integer IMMUTABLE LANGUAGE sql AS $$
    SELECT coalesce(capacity,
                    CASE WHEN gpus > 0 THEN greatest(1, least(gpus * 3, vcpus / 4))
                         ELSE greatest(1, vcpus / 2) END)
$$;

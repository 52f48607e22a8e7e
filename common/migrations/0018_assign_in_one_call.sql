-- The common assign in one round trip. The control plane used to run it as
-- five (BEGIN, the user's lock, the checks, the allocation, COMMIT); at a
-- fleet's assign rate those round trips were most of the database's and the
-- control plane's work. Called as one statement, so it is its own
-- transaction: the per-user advisory lock is held until it ends.
--
-- Outcomes (the control plane maps each to its answer):
--   allocated           a warm session was taken: session and host columns set
--   reissued            the user's repeat of an assign not yet running: the
--                       session's token hash is now p_token_sha256
--   repeated            the user's repeat of a running assign (token unchanged)
--   ending              the repeated assign's session is ending
--   region_not_enabled  detail: the first requested region not enabled
--   unknown_runtime
--   user_limit          detail: the user's session count
--   pick                no host at the head of any region's pick order had a
--                       warm session left to lock (concurrent assigns hold
--                       them, or none qualifies): nothing was changed, and the
--                       control plane looks further, host by host, in its own
--                       transaction. detail: the runtime's gpus.
CREATE FUNCTION assign_session(p_user text, p_runtime text, p_regions text[], p_commit text,
                               p_csid text, p_token_sha256 text)
RETURNS TABLE (outcome text, session_id uuid, session_status session_status, host_id text,
               ip text, api_port integer, cert_sha256 text, region text, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_enabled text[];
    v_gpus text;
    v_min_gpus integer;
    v_limit integer;
    v_used bigint;
    v_region text;
BEGIN
    -- One assign per user at a time: the limit and repeat checks would race otherwise.
    PERFORM pg_advisory_xact_lock(hashtextextended('berth.user.' || p_user, 0));
    IF p_csid IS NOT NULL THEN
        SELECT s.id, s.status, h.id, host(h.public_ip), h.api_port, h.cert_sha256, h.region
          INTO session_id, session_status, host_id, ip, api_port, cert_sha256, region
          FROM sessions s JOIN hosts h ON h.id = s.host_id
         WHERE s.user_id = p_user AND s.client_session_id = p_csid;
        IF FOUND THEN
            IF session_status = 'DYING' THEN
                outcome := 'ending';
            ELSIF session_status IN ('ALLOCATED', 'CONNECTING') THEN
                -- The client may have lost the first answer; the old token stops working.
                UPDATE sessions s SET token_sha256 = p_token_sha256 WHERE s.id = session_id;
                outcome := 'reissued';
            ELSE
                outcome := 'repeated';
            END IF;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;

    SELECT ARRAY(SELECT r.name FROM regions r WHERE r.name = ANY(p_regions) AND r.enabled),
           (SELECT rt.gpus FROM runtimes rt WHERE rt.name = p_runtime),
           coalesce((SELECT l.max_sessions FROM limits l WHERE l.user_id = p_user),
                    (SELECT l.max_sessions FROM limits l WHERE l.user_id = '*'), 3),
           (SELECT count(*) FROM sessions s WHERE s.user_id = p_user AND s.status <> 'DYING')
      INTO v_enabled, v_gpus, v_limit, v_used;
    SELECT wanted.name INTO detail
      FROM unnest(p_regions) WITH ORDINALITY AS wanted (name, position)
     WHERE NOT (wanted.name = ANY(v_enabled))
     ORDER BY wanted.position LIMIT 1;
    IF detail IS NOT NULL THEN
        outcome := 'region_not_enabled';
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_gpus IS NULL THEN
        outcome := 'unknown_runtime';
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_used >= v_limit THEN
        outcome := 'user_limit';
        detail := v_used::text;
        RETURN NEXT;
        RETURN;
    END IF;
    -- A GPU runtime goes only to hosts with at least that many GPUs ('all': one or more).
    v_min_gpus := CASE WHEN v_gpus = 'all' THEN 1 ELSE v_gpus::integer END;

    -- Region by region in the client's order: the host at the head of the
    -- hosts_pick index (fullest first) with a warm session of the runtime, both
    -- locked skipping rows concurrent assigns hold, its slot taken and the
    -- session allocated, in one statement: no slot, no allocation.
    FOREACH v_region IN ARRAY p_regions LOOP
        RETURN QUERY
        WITH picked AS (
            SELECT h.id FROM hosts h
              JOIN images i ON i.region = h.region AND i.image_id = h.image_id AND i.status = 'CURRENT'
             WHERE h.status = 'ACTIVE' AND h.free_slots > 0 AND h.region = v_region
               AND (p_commit = '' OR h.client_sha = p_commit) AND h.gpus >= v_min_gpus
               AND EXISTS (SELECT 1 FROM sessions s
                            WHERE s.host_id = h.id AND s.runtime = p_runtime AND s.status = 'WAITING')
             ORDER BY h.free_slots, h.id LIMIT 1 FOR UPDATE OF h SKIP LOCKED),
        warm AS (
            SELECT s.id, s.host_id FROM sessions s JOIN picked ON picked.id = s.host_id
             WHERE s.runtime = p_runtime AND s.status = 'WAITING' LIMIT 1 FOR UPDATE OF s SKIP LOCKED),
        slot AS (
            UPDATE hosts SET free_slots = hosts.free_slots - 1 FROM warm
             WHERE hosts.id = warm.host_id AND hosts.free_slots > 0 AND hosts.status = 'ACTIVE'
            RETURNING hosts.id, host(hosts.public_ip) AS ip, hosts.api_port, hosts.cert_sha256, hosts.region),
        taken AS (
            UPDATE sessions x SET status = 'ALLOCATED', user_id = p_user, client_session_id = p_csid,
                   token_sha256 = p_token_sha256, allocated_at = now()
              FROM warm JOIN slot ON slot.id = warm.host_id WHERE x.id = warm.id
            RETURNING x.id AS session_id, x.status, slot.id AS host_id, slot.ip, slot.api_port,
                      slot.cert_sha256, slot.region)
        SELECT 'allocated'::text, t.session_id, t.status, t.host_id, t.ip, t.api_port,
               t.cert_sha256, t.region, NULL::text
          FROM taken t;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
    outcome := 'pick';
    detail := v_gpus;
    RETURN NEXT;
END $$;

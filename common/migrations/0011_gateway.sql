-- The browser gateway.
--
-- Keys every control-plane replica shares, made by the first one to start:
-- `grants` (an Ed25519 PKCS#8 document) signs the access grants the gateway
-- sends hosts, who get its public half at registration; `gateway_cookies`
-- (32 random bytes) signs the gateway's login cookies. Only the control
-- plane, the sole holder of DATABASE_URL, reads them.
CREATE TABLE control_keys (
    name       text PRIMARY KEY,
    secret     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One-time login codes: `POST /sessions/<id>/login-code` makes one for the
-- session's owner, the gateway's `/_berth/login?code=…` spends it (on any
-- replica). Only hashes are stored; codes live a minute.
CREATE TABLE login_codes (
    code_sha256 text PRIMARY KEY CHECK (code_sha256 ~ '^[0-9a-f]{64}$'),
    session_id  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX login_codes_expiry ON login_codes (expires_at);

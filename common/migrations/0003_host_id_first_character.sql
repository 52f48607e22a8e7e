-- Host ids start with a letter or digit (no ".", "..", "-x"): they end up in
-- paths, labels and NOTIFY channel names. Matches HostId::parse.
ALTER TABLE hosts DROP CONSTRAINT hosts_id_check;
ALTER TABLE hosts ADD CONSTRAINT hosts_id_check CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$');

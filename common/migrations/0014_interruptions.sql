-- A session whose host was taken back by EC2 (a spot interruption) ends as
-- INTERRUPTED, so its user sees why rather than ENDED or HOST_LOST.
ALTER TYPE session_outcome ADD VALUE IF NOT EXISTS 'INTERRUPTED';

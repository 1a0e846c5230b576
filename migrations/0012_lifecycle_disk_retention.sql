-- The writable layer's size of each sandbox, and until when a hibernated sandbox is kept.
ALTER TABLE lifecycle.sandboxes
  ADD COLUMN disk_mb integer NOT NULL DEFAULT 2048,
  ADD COLUMN retain_until timestamptz;
-- The reaper reads only hibernated rows by their retention deadline.
CREATE INDEX sandboxes_retention ON lifecycle.sandboxes (retain_until) WHERE state = 'HIBERNATED';

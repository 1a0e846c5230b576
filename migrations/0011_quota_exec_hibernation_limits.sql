-- Per-tenant caps on concurrent exec calls and on hibernated sandboxes (the retention period of a
-- hibernated sandbox, hibernation_retention_sec, has been here since 0002).
ALTER TABLE quota.limits
  ADD COLUMN max_concurrent_execs integer NOT NULL DEFAULT 32 CHECK (max_concurrent_execs >= 0),
  ADD COLUMN max_hibernated integer NOT NULL DEFAULT 10 CHECK (max_hibernated >= 0);

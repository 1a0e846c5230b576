-- Scheduler: image cache budgets of runners and what each cached image is, for pre-warming and
-- the capacity view. Heartbeats are held in memory; the scheduler writes a coarse last_heartbeat
-- and changed image lists in batches.
ALTER TABLE scheduler.runners
  ADD COLUMN image_cache_bytes bigint NOT NULL DEFAULT 0 CHECK (image_cache_bytes >= 0),
  ADD COLUMN image_cache_used_bytes bigint NOT NULL DEFAULT 0 CHECK (image_cache_used_bytes >= 0);

ALTER TABLE scheduler.runner_images
  ADD COLUMN last_used timestamptz;

CREATE INDEX runners_draining ON scheduler.runners (id) WHERE draining;

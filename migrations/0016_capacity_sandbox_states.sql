-- Capacity history: live sandboxes by state in every snapshot (the scheduler reads the
-- lifecycle's rows for them; PENDING ones count in the fleet's row only), in both tables, in
-- the same column order (the history's reads take `SELECT *` of either).
ALTER TABLE scheduler.capacity_history
  ADD COLUMN sandboxes_pending    bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_starting   bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_running    bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_hibernated bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_destroying bigint NOT NULL DEFAULT 0;
ALTER TABLE scheduler.capacity_history_5m
  ADD COLUMN sandboxes_pending    bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_starting   bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_running    bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_hibernated bigint NOT NULL DEFAULT 0,
  ADD COLUMN sandboxes_destroying bigint NOT NULL DEFAULT 0;

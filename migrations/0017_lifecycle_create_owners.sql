-- Creates in flight know their driver, and retries waiting for one are woken by a notification.
--
-- Every lifecycle replica takes an id from this sequence and holds the session advisory lock
-- (4243, id) on a dedicated connection for as long as it lives (services/lifecycle/
-- replica_session.h): a PENDING or STARTING row whose `owner` holds no such lock belongs to a
-- replica that died, and another replica takes it over (a guarded update) and finishes the create.
CREATE SEQUENCE lifecycle.replica_ids AS integer MINVALUE 1 CYCLE;
-- NULL: a row written by an older version (left to the reconciler's --stuck_after_sec).
ALTER TABLE lifecycle.sandboxes ADD COLUMN owner integer;
-- Set by an idempotent retry that waits for the row on another replica: the row's way out of
-- PENDING/STARTING (or its removal) then notifies `isorun_sandbox_settled` with its id. Rows
-- nobody waits for notify nothing, so creates pay no NOTIFY (its commit-time lock serialises).
ALTER TABLE lifecycle.sandboxes ADD COLUMN awaited boolean NOT NULL DEFAULT false;

CREATE FUNCTION lifecycle.notify_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('isorun_sandbox_settled', OLD.id);
  RETURN NULL;
END
$$;

CREATE TRIGGER sandboxes_settled AFTER UPDATE OF state ON lifecycle.sandboxes
  FOR EACH ROW WHEN (OLD.awaited AND NEW.state NOT IN ('PENDING', 'STARTING'))
  EXECUTE FUNCTION lifecycle.notify_settled();
CREATE TRIGGER sandboxes_unacknowledged_removed AFTER DELETE ON lifecycle.sandboxes
  FOR EACH ROW WHEN (OLD.awaited AND OLD.state IN ('PENDING', 'STARTING'))
  EXECUTE FUNCTION lifecycle.notify_settled();

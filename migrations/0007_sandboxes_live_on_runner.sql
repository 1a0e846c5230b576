-- A runner's live sandboxes (runner sync and lost runners) are read through an index: without it
-- every sync read the whole sandboxes table, ended sandboxes included.
CREATE INDEX sandboxes_live_on_runner ON lifecycle.sandboxes (runner_id)
  WHERE state IN ('RUNNING', 'HIBERNATED');

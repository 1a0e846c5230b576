-- Lookups that read a whole table without an index, and so grew with every sandbox ever made.
-- A runner's live sandboxes (runner sync and lost runners).
CREATE INDEX sandboxes_live_on_runner ON lifecycle.sandboxes (runner_id)
  WHERE state IN ('RUNNING', 'HIBERNATED');
-- A create undone before it was acknowledged drops its idempotency key by sandbox id.
CREATE INDEX idempotency_keys_sandbox ON lifecycle.idempotency_keys (sandbox_id);

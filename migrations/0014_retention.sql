-- Retention: ended sandboxes (with their events and idempotency keys) and old idempotency keys
-- are purged in small batches by the lifecycle service; these indexes find the oldest first
-- without reading anything else.
CREATE INDEX sandboxes_ended ON lifecycle.sandboxes (ended_at)
  WHERE state IN ('DESTROYED', 'FAILED', 'LOST');
CREATE INDEX idempotency_keys_created ON lifecycle.idempotency_keys (created_at);
-- Env values may hold secrets: an ended sandbox keeps none (new transitions clear them).
UPDATE lifecycle.sandboxes SET env = '{}'
  WHERE state IN ('DESTROYING', 'DESTROYED', 'FAILED', 'LOST') AND env <> '{}';

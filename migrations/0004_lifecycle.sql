-- Owned by the lifecycle service: sandboxes, their transitions, and idempotency keys.
CREATE SCHEMA lifecycle;

CREATE TABLE lifecycle.sandboxes (
  id             text PRIMARY KEY,
  tenant_id      uuid NOT NULL,
  state          text NOT NULL CHECK (state IN ('PENDING', 'STARTING', 'RUNNING', 'HIBERNATED',
                                               'DESTROYING', 'DESTROYED', 'FAILED', 'LOST')),
  image          text NOT NULL,
  image_digest   text NOT NULL DEFAULT '',
  cpu_millis     integer NOT NULL,
  memory_mb      integer NOT NULL,
  timeout_sec    integer NOT NULL,
  env            jsonb NOT NULL DEFAULT '{}',
  metadata       jsonb NOT NULL DEFAULT '{}',
  network        jsonb NOT NULL DEFAULT '{}',
  public_id      text NOT NULL UNIQUE,
  runner_id      text,
  runner_address text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz,
  ended_at       timestamptz,
  end_reason     text,
  end_message    text
);
-- Listing walks a tenant's sandboxes in creation order (page tokens are (created_at, id)).
CREATE INDEX sandboxes_tenant_created ON lifecycle.sandboxes (tenant_id, created_at, id);
-- The idle reaper reads only running rows by deadline.
CREATE INDEX sandboxes_expiry ON lifecycle.sandboxes (expires_at) WHERE state = 'RUNNING';
-- The reconciler reads only rows caught between states.
CREATE INDEX sandboxes_unsettled ON lifecycle.sandboxes (updated_at)
  WHERE state IN ('PENDING', 'STARTING', 'DESTROYING');

CREATE TABLE lifecycle.sandbox_events (
  id         bigserial PRIMARY KEY,
  sandbox_id text NOT NULL,
  from_state text,
  to_state   text NOT NULL,
  reason     text,
  at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_events_sandbox ON lifecycle.sandbox_events (sandbox_id);

-- A create with an Idempotency-Key returns the first sandbox for 24 h.
CREATE TABLE lifecycle.idempotency_keys (
  tenant_id  uuid NOT NULL,
  key        text NOT NULL,
  sandbox_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, key)
);

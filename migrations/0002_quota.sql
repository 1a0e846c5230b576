-- Owned by the quota service: per-tenant limits, usage and one reservation per admitted sandbox.
CREATE SCHEMA quota;

CREATE TABLE quota.limits (
  tenant_id                 uuid PRIMARY KEY,
  max_concurrent            integer NOT NULL DEFAULT 10 CHECK (max_concurrent >= 0),
  creates_per_sec           double precision NOT NULL DEFAULT 5 CHECK (creates_per_sec > 0),
  requests_per_sec          double precision NOT NULL DEFAULT 50 CHECK (requests_per_sec > 0),
  hibernation_retention_sec integer NOT NULL DEFAULT 604800 CHECK (hibernation_retention_sec > 0),
  updated_at                timestamptz NOT NULL DEFAULT now()
);

-- `active` always equals the number of reservations of the tenant: both change in one transaction.
CREATE TABLE quota.usage (
  tenant_id uuid PRIMARY KEY REFERENCES quota.limits (tenant_id),
  active    integer NOT NULL DEFAULT 0 CHECK (active >= 0)
);

CREATE TABLE quota.reservations (
  sandbox_id text PRIMARY KEY,
  tenant_id  uuid NOT NULL REFERENCES quota.usage (tenant_id),
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_tenant ON quota.reservations (tenant_id);

-- Owned by the gateway: operator tokens for /v1/admin/* and the dashboard's operator view.
-- Format isro_<tokenId>_<secret> (base62); only a SHA-256 of the secret is stored.
CREATE TABLE accounts.operator_tokens (
  token_id    text PRIMARY KEY,
  name        text NOT NULL DEFAULT '' CHECK (length(name) <= 128),
  secret_hash text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);

-- Per-tenant usage history, written by the gateways: per bucket (a minute, or an hour once a
-- day old) and metric, a value. Counters ("creates", "refused:<REASON>") are added up across
-- gateways; gauges ("active_max", "hibernated_max") keep the largest value seen.
CREATE TABLE accounts.tenant_usage_history (
  tenant_id uuid NOT NULL,
  step_sec  int NOT NULL,
  bucket    timestamptz NOT NULL,
  metric    text NOT NULL,
  value     bigint NOT NULL,
  PRIMARY KEY (tenant_id, step_sec, bucket, metric)
);
CREATE INDEX tenant_usage_history_bucket ON accounts.tenant_usage_history (step_sec, bucket);

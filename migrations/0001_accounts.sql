-- Owned by the gateway: tenants and their API keys (only hashes of secrets are stored).
CREATE SCHEMA accounts;

CREATE TABLE accounts.tenants (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name       text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts.api_keys (
  key_id      text PRIMARY KEY,
  tenant_id   uuid NOT NULL REFERENCES accounts.tenants (id),
  region      text NOT NULL,
  secret_hash text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON accounts.api_keys (tenant_id);

-- Gateways cache key lookups and LISTEN on this channel: any change to a key (revocation above
-- all) evicts it from every gateway's cache at once.
CREATE FUNCTION accounts.notify_api_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('isorun_api_keys', OLD.key_id);
  RETURN NULL;
END $$;

CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON accounts.api_keys
  FOR EACH ROW EXECUTE FUNCTION accounts.notify_api_key_change();

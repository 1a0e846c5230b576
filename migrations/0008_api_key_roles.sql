-- Keys get a role, a name and a last-use time, so tenants can manage their own keys (GET, POST
-- and DELETE /v1/keys). `admin` keys may manage keys; `sandbox` keys only use sandboxes.
-- Keys that exist today become admin, so nothing a tenant does now stops working; new keys
-- are `sandbox` unless asked otherwise.
ALTER TABLE accounts.api_keys
  ADD COLUMN role text NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'sandbox')),
  ADD COLUMN name text NOT NULL DEFAULT '' CHECK (length(name) <= 128),
  ADD COLUMN last_used_at timestamptz;
ALTER TABLE accounts.api_keys ALTER COLUMN role SET DEFAULT 'sandbox';

-- Gateways write last_used_at in batches; that must not evict the key from every gateway's
-- cache. Only changes that decide authentication (revocation above all) notify.
DROP TRIGGER api_keys_changed ON accounts.api_keys;
CREATE TRIGGER api_keys_changed AFTER UPDATE ON accounts.api_keys
  FOR EACH ROW
  WHEN ((OLD.revoked_at, OLD.role, OLD.secret_hash, OLD.tenant_id, OLD.region)
        IS DISTINCT FROM (NEW.revoked_at, NEW.role, NEW.secret_hash, NEW.tenant_id, NEW.region))
  EXECUTE FUNCTION accounts.notify_api_key_change();
CREATE TRIGGER api_keys_deleted AFTER DELETE ON accounts.api_keys
  FOR EACH ROW EXECUTE FUNCTION accounts.notify_api_key_change();

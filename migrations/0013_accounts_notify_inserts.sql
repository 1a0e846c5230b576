-- Gateways also cache unknown key ids for a few seconds: a new key notifies too ("+" and its id),
-- so that an id cached as unknown is forgotten the moment its key is created.
CREATE FUNCTION accounts.notify_api_key_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('isorun_api_keys', '+' || NEW.key_id);
  RETURN NULL;
END $$;

CREATE TRIGGER api_keys_inserted AFTER INSERT ON accounts.api_keys
  FOR EACH ROW EXECUTE FUNCTION accounts.notify_api_key_insert();

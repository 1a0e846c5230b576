-- Admission of many sandboxes in one call (the quota service's AdmitBatch, and Admit as a batch of
-- one). Tenants are taken in uuid order, so concurrent calls lock usage rows without deadlock; each
-- tenant's usage row is locked once and its slots are given in request order while they last.
-- Every sandbox gets one outcome, by its position `ord` (1-based) in the arrays:
--   ADMITTED  a slot was taken now
--   HELD      the sandbox already had a slot (a retried Admit): nothing changes
--   FULL      the tenant is at its limit
--   NO_TENANT the tenant has no limits
-- `active` is the tenant's usage after that sandbox's outcome. usage.active keeps equal to the
-- tenant's reservation count: both change in this one transaction.
CREATE FUNCTION quota.admit_many(sandbox_ids text[], tenant_ids uuid[])
RETURNS TABLE (o_ord integer, o_outcome text, o_active integer, o_limit integer)
LANGUAGE plpgsql AS $$
DECLARE
  t uuid;
  n_active integer;
  n_limit integer;
  i integer;
BEGIN
  FOR t IN SELECT DISTINCT x FROM unnest(tenant_ids) AS x ORDER BY 1 LOOP
    SELECT u.active, l.max_concurrent INTO n_active, n_limit
      FROM quota.usage u JOIN quota.limits l ON l.tenant_id = u.tenant_id
      WHERE u.tenant_id = t
      FOR UPDATE OF u;
    FOR i IN 1 .. coalesce(array_length(sandbox_ids, 1), 0) LOOP
      CONTINUE WHEN tenant_ids[i] IS DISTINCT FROM t;
      o_ord := i;
      IF n_limit IS NULL THEN
        o_outcome := 'NO_TENANT';
      ELSIF EXISTS (SELECT 1 FROM quota.reservations r WHERE r.sandbox_id = sandbox_ids[i]) THEN
        o_outcome := 'HELD';
      ELSIF n_active < n_limit THEN
        INSERT INTO quota.reservations (sandbox_id, tenant_id) VALUES (sandbox_ids[i], t);
        n_active := n_active + 1;
        o_outcome := 'ADMITTED';
      ELSE
        o_outcome := 'FULL';
      END IF;
      o_active := coalesce(n_active, 0);
      o_limit := coalesce(n_limit, 0);
      RETURN NEXT;
    END LOOP;
    IF n_limit IS NOT NULL THEN
      UPDATE quota.usage u SET active = n_active WHERE u.tenant_id = t;
    END IF;
  END LOOP;
END
$$;

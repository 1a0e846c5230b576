-- What a starting sandbox waits for (GET /v1/sandboxes/{id} and the list show it while the
-- sandbox is STARTING): its runner's pull of a cold image, with bytes so far and in all. Written
-- by the lifecycle while it waits for the runner; meaningless once the sandbox has left STARTING.
ALTER TABLE lifecycle.sandboxes
  ADD COLUMN start_phase      text,
  ADD COLUMN pull_bytes_done  bigint,
  ADD COLUMN pull_bytes_total bigint;

-- Owned by the scheduler: a snapshot of the fleet every interval (region '' is the whole fleet),
-- for operators' capacity charts and the exhaustion forecast. Gauges are values at `at`;
-- placements_warm, placements_cold, capacity_refusals and pulls count events since the previous
-- snapshot. Rows older than a day move to capacity_history_5m (gauges averaged, counts summed
-- per 5-minute bucket), which is kept for 30 days.
CREATE TABLE scheduler.capacity_history (
  at                   timestamptz NOT NULL,
  region               text NOT NULL,
  runners_healthy      int NOT NULL,
  runners_unhealthy    int NOT NULL,
  runners_lost         int NOT NULL,
  runners_draining     int NOT NULL,
  cpu_capacity_millis  bigint NOT NULL,
  cpu_allocated_millis bigint NOT NULL,
  cpu_free_millis      bigint NOT NULL,
  memory_capacity_mb   bigint NOT NULL,
  memory_allocated_mb  bigint NOT NULL,
  memory_free_mb       bigint NOT NULL,
  slots_capacity       bigint NOT NULL,
  slots_allocated      bigint NOT NULL,
  slots_free           bigint NOT NULL,
  sandboxes            bigint NOT NULL,
  cached_images        bigint NOT NULL,
  placements_warm      bigint NOT NULL,
  placements_cold      bigint NOT NULL,
  capacity_refusals    bigint NOT NULL,
  pulls                bigint NOT NULL,
  PRIMARY KEY (at, region)
);
CREATE TABLE scheduler.capacity_history_5m (LIKE scheduler.capacity_history INCLUDING ALL);

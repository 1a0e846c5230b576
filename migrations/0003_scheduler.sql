-- Owned by the scheduler: the runner registry, cached images and placements.
CREATE SCHEMA scheduler;

CREATE TABLE scheduler.runners (
  id             text PRIMARY KEY,
  name           text NOT NULL UNIQUE,
  address        text NOT NULL,
  region         text NOT NULL,
  cpu_millis     integer NOT NULL CHECK (cpu_millis >= 0),
  memory_mb      integer NOT NULL CHECK (memory_mb >= 0),
  max_sandboxes  integer NOT NULL CHECK (max_sandboxes >= 0),
  draining       boolean NOT NULL DEFAULT false,
  registered_at  timestamptz NOT NULL DEFAULT now(),
  last_heartbeat timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE scheduler.runner_images (
  runner_id  text NOT NULL REFERENCES scheduler.runners (id) ON DELETE CASCADE,
  digest     text NOT NULL,
  size_bytes bigint NOT NULL DEFAULT 0,
  refs       text[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (runner_id, digest)
);

CREATE TABLE scheduler.placements (
  sandbox_id text PRIMARY KEY,
  runner_id  text NOT NULL REFERENCES scheduler.runners (id),
  cpu_millis integer NOT NULL,
  memory_mb  integer NOT NULL,
  image      text NOT NULL,
  warm       boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX placements_runner ON scheduler.placements (runner_id);

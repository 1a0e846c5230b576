#include "scheduler/scheduler_store.h"

#include "absl/strings/str_cat.h"
#include "services/kit/ids.h"

namespace isorun::scheduler {

SchedulerStore::SchedulerStore(PgPool& pool) : pool_(pool) {
  pool_.Prepare("sched_upsert_runner",
                "INSERT INTO scheduler.runners (id, name, address, region, cpu_millis, memory_mb, "
                "max_sandboxes) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                "ON CONFLICT (name) DO UPDATE SET address = excluded.address, "
                "region = excluded.region, cpu_millis = excluded.cpu_millis, "
                "memory_mb = excluded.memory_mb, max_sandboxes = excluded.max_sandboxes, "
                "last_heartbeat = now() RETURNING id, draining");
  pool_.Prepare("sched_touch_runner",
                "UPDATE scheduler.runners SET last_heartbeat = now() WHERE id = $1 "
                "RETURNING draining");
  pool_.Prepare("sched_delete_images", "DELETE FROM scheduler.runner_images WHERE runner_id = $1");
  pool_.Prepare("sched_insert_image",
                "INSERT INTO scheduler.runner_images (runner_id, digest) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING");
  pool_.Prepare("sched_insert_placement",
                "INSERT INTO scheduler.placements (sandbox_id, runner_id, cpu_millis, memory_mb, "
                "image, warm) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sandbox_id) DO NOTHING");
  pool_.Prepare("sched_delete_placement",
                "DELETE FROM scheduler.placements WHERE sandbox_id = $1 RETURNING 1");
}

absl::StatusOr<std::pair<std::string, bool>> SchedulerStore::UpsertRunner(
    const RunnerView& runner) {
  std::pair<std::string, bool> out;
  absl::Status s = pool_.Transact([&](pqxx::work& tx) {
    auto r = tx.exec_prepared("sched_upsert_runner", "rn_" + RandomBase62(9), runner.name,
                              runner.address, runner.region, runner.capacity.cpu_millis,
                              runner.capacity.memory_mb, runner.capacity.sandboxes);
    out = {r[0][0].as<std::string>(), r[0][1].as<bool>()};
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<bool> SchedulerStore::TouchRunner(const std::string& runner_id) {
  bool draining = false;
  absl::Status s = pool_.Execute(
      [&](pqxx::nontransaction& tx) -> absl::Status {
        auto r = tx.exec_prepared("sched_touch_runner", runner_id);
        if (r.empty()) return absl::NotFoundError(absl::StrCat("unknown runner ", runner_id));
        draining = r[0][0].as<bool>();
        return absl::OkStatus();
      },
      Durability::kAsync);
  if (!s.ok()) return s;
  return draining;
}

absl::Status SchedulerStore::ReplaceImages(const std::string& runner_id,
                                           const std::vector<std::string>& refs) {
  return pool_.Transact(
      [&](pqxx::work& tx) {
        tx.exec_prepared("sched_delete_images", runner_id);
        for (const auto& ref : refs) tx.exec_prepared("sched_insert_image", runner_id, ref);
        return absl::OkStatus();
      },
      Durability::kAsync);
}

absl::Status SchedulerStore::InsertPlacement(const StoredPlacement& p) {
  // Asynchronous commit: the lifecycle's durable RUNNING commit flushes it before any client sees
  // the sandbox; a placement lost in a crash belongs to a create that was never acknowledged.
  return pool_.Execute(
      [&](pqxx::nontransaction& tx) {
        tx.exec_prepared("sched_insert_placement", p.sandbox_id, p.runner_id, p.cpu_millis,
                         p.memory_mb, p.image, p.warm);
        return absl::OkStatus();
      },
      Durability::kAsync);
}

absl::StatusOr<bool> SchedulerStore::DeletePlacement(const std::string& sandbox_id) {
  bool deleted = false;
  absl::Status s = pool_.Execute(
      [&](pqxx::nontransaction& tx) {
        deleted = !tx.exec_prepared("sched_delete_placement", sandbox_id).empty();
        return absl::OkStatus();
      },
      Durability::kAsync);
  if (!s.ok()) return s;
  return deleted;
}

absl::StatusOr<FleetSnapshot> SchedulerStore::Load() {
  FleetSnapshot snap;
  absl::Status s = pool_.Transact([&](pqxx::work& tx) {
    snap = FleetSnapshot{};
    for (const auto& row : tx.exec(
             "SELECT id, name, address, region, cpu_millis, memory_mb, max_sandboxes, draining, "
             "extract(epoch FROM last_heartbeat)::float8 FROM scheduler.runners ORDER BY name")) {
      RunnerView r;
      r.id = row[0].as<std::string>();
      r.name = row[1].as<std::string>();
      r.address = row[2].as<std::string>();
      r.region = row[3].as<std::string>();
      r.capacity = {row[4].as<int64_t>(), row[5].as<int64_t>(), row[6].as<int64_t>()};
      r.draining = row[7].as<bool>();
      r.last_heartbeat = absl::FromUnixMicros(static_cast<int64_t>(row[8].as<double>() * 1e6));
      snap.runners.push_back(std::move(r));
    }
    for (const auto& row : tx.exec("SELECT runner_id, digest FROM scheduler.runner_images")) {
      for (auto& r : snap.runners) {
        if (r.id == row[0].c_str()) r.images.insert(row[1].as<std::string>());
      }
    }
    for (const auto& row :
         tx.exec("SELECT sandbox_id, runner_id, cpu_millis, memory_mb, image, warm, "
                 "(extract(epoch FROM created_at) * 1000000)::bigint FROM scheduler.placements")) {
      snap.placements.push_back(StoredPlacement{
          row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<int64_t>(),
          row[3].as<int64_t>(), row[4].as<std::string>(), row[5].as<bool>(),
          absl::FromUnixMicros(row[6].as<int64_t>())});
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return snap;
}

}  // namespace isorun::scheduler

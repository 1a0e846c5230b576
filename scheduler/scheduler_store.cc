#include "scheduler/scheduler_store.h"

#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/ids.h"
#include "services/kit/json.h"

namespace isorun::scheduler {
namespace {

std::string Timestamp(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
}

// [{"runner_id", "digest", "size_bytes", "refs", "last_used"}] for jsonb_to_recordset.
void AppendImages(JsonWriter& w, const std::string& runner_id,
                  const std::vector<CachedImage>& images) {
  for (const auto& img : images) {
    const std::string& key = !img.digest.empty() ? img.digest
                             : !img.refs.empty() ? img.refs.front()
                                                 : img.digest;
    if (key.empty()) continue;
    w.BeginObject().Key("runner_id").String(runner_id).Key("digest").String(key);
    w.Key("size_bytes").Int(img.size_bytes).Key("refs").BeginArray();
    for (const auto& ref : img.refs) w.String(ref);
    w.EndArray().Key("last_used");
    if (img.last_used == absl::InfinitePast()) {
      w.Null();
    } else {
      w.String(Timestamp(img.last_used));
    }
    w.EndObject();
  }
}

}  // namespace

SchedulerStore::SchedulerStore(PgPool& pool) : pool_(pool) {
  pool_.Prepare("sched_upsert_runner",
                "INSERT INTO scheduler.runners (id, name, address, region, cpu_millis, memory_mb, "
                "max_sandboxes, image_cache_bytes, image_cache_used_bytes) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                "ON CONFLICT (name) DO UPDATE SET address = excluded.address, "
                "region = excluded.region, cpu_millis = excluded.cpu_millis, "
                "memory_mb = excluded.memory_mb, max_sandboxes = excluded.max_sandboxes, "
                "image_cache_bytes = excluded.image_cache_bytes, "
                "image_cache_used_bytes = excluded.image_cache_used_bytes, "
                "last_heartbeat = now() RETURNING id, draining");
  pool_.Prepare(
      "sched_touch_runners",
      "UPDATE scheduler.runners r SET last_heartbeat = greatest(r.last_heartbeat, x.seen) "
      "FROM jsonb_to_recordset($1::jsonb) AS x(id text, seen timestamptz) "
      "WHERE r.id = x.id");
  pool_.Prepare("sched_delete_images",
                "DELETE FROM scheduler.runner_images "
                "WHERE runner_id IN (SELECT jsonb_array_elements_text($1::jsonb))");
  pool_.Prepare("sched_insert_images",
                "INSERT INTO scheduler.runner_images (runner_id, digest, size_bytes, refs, "
                "last_used) "
                "SELECT x.runner_id, x.digest, coalesce(x.size_bytes, 0), coalesce(x.refs, '{}'), "
                "x.last_used FROM jsonb_to_recordset($1::jsonb) AS x(runner_id text, digest text, "
                "size_bytes bigint, refs text[], last_used timestamptz) "
                "JOIN scheduler.runners r ON r.id = x.runner_id "
                "ON CONFLICT (runner_id, digest) DO NOTHING");
  pool_.Prepare("sched_image_usage",
                "UPDATE scheduler.runners r SET image_cache_used_bytes = x.used "
                "FROM jsonb_to_recordset($1::jsonb) AS x(id text, used bigint) WHERE r.id = x.id");
  pool_.Prepare("sched_draining", "SELECT id FROM scheduler.runners WHERE draining");
  pool_.Prepare("sched_drain_by_name",
                "UPDATE scheduler.runners SET draining = $2 WHERE name = $1 RETURNING id");
  pool_.Prepare("sched_drain_by_id",
                "UPDATE scheduler.runners SET draining = $2 WHERE id = $1 RETURNING id");
  pool_.Prepare("sched_insert_placements",
                "INSERT INTO scheduler.placements (sandbox_id, runner_id, cpu_millis, memory_mb, "
                "image, warm) SELECT sandbox_id, runner_id, cpu::integer, mem::integer, image, "
                "warm::boolean FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
                "$5::text[], $6::text[]) AS r(sandbox_id, runner_id, cpu, mem, image, warm) "
                "ON CONFLICT (sandbox_id) DO NOTHING");
  pool_.Prepare("sched_delete_placements",
                "DELETE FROM scheduler.placements WHERE sandbox_id = ANY($1::text[]) "
                "RETURNING sandbox_id");
}

absl::StatusOr<std::pair<std::string, bool>> SchedulerStore::UpsertRunner(
    const RunnerView& runner) {
  std::pair<std::string, bool> out;
  absl::Status s = pool_.Transact([&](pqxx::work& tx) {
    auto r = tx.exec_prepared("sched_upsert_runner", "rn_" + RandomBase62(9), runner.name,
                              runner.address, runner.region, runner.capacity.cpu_millis,
                              runner.capacity.memory_mb, runner.capacity.sandboxes,
                              runner.image_cache_bytes, runner.image_cache_used_bytes);
    out = {r[0][0].as<std::string>(), r[0][1].as<bool>()};
    JsonWriter ids;
    ids.BeginArray().String(out.first).EndArray();
    tx.exec_prepared("sched_delete_images", ids.str());
    JsonWriter images;
    images.BeginArray();
    AppendImages(images, out.first, runner.images);
    images.EndArray();
    tx.exec_prepared("sched_insert_images", images.str());
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return out;
}

absl::Status SchedulerStore::TouchRunners(
    const std::vector<std::pair<std::string, absl::Time>>& last_seen) {
  if (last_seen.empty()) return absl::OkStatus();
  JsonWriter w;
  w.BeginArray();
  for (const auto& [id, seen] : last_seen) {
    w.BeginObject().Key("id").String(id).Key("seen").String(Timestamp(seen)).EndObject();
  }
  w.EndArray();
  return pool_.Execute(
      [&](pqxx::nontransaction& tx) {
        tx.exec_prepared("sched_touch_runners", w.str());
        return absl::OkStatus();
      },
      Durability::kAsync);
}

absl::Status SchedulerStore::ReplaceImages(const std::vector<RunnerImages>& runners) {
  if (runners.empty()) return absl::OkStatus();
  JsonWriter ids, images, usage;
  ids.BeginArray();
  images.BeginArray();
  usage.BeginArray();
  for (const auto& r : runners) {
    ids.String(r.runner_id);
    AppendImages(images, r.runner_id, r.images);
    usage.BeginObject().Key("id").String(r.runner_id).Key("used").Int(r.used_bytes).EndObject();
  }
  ids.EndArray();
  images.EndArray();
  usage.EndArray();
  return pool_.Transact(
      [&](pqxx::work& tx) {
        tx.exec_prepared("sched_delete_images", ids.str());
        tx.exec_prepared("sched_insert_images", images.str());
        tx.exec_prepared("sched_image_usage", usage.str());
        return absl::OkStatus();
      },
      Durability::kAsync);
}

absl::Status SchedulerStore::SetDraining(const std::string& name_or_id, bool draining) {
  return pool_.Transact([&](pqxx::work& tx) -> absl::Status {
    // A name wins over another runner's id, as in `isorunctl runners drain`.
    if (!tx.exec_prepared("sched_drain_by_name", name_or_id, draining).empty()) {
      return absl::OkStatus();
    }
    if (!tx.exec_prepared("sched_drain_by_id", name_or_id, draining).empty()) {
      return absl::OkStatus();
    }
    return absl::NotFoundError(absl::StrCat("runner '", name_or_id, "' not found"));
  });
}

absl::StatusOr<std::vector<std::string>> SchedulerStore::DrainingRunners() {
  std::vector<std::string> out;
  absl::Status s = pool_.Execute(
      [&](pqxx::nontransaction& tx) {
        out.clear();
        for (const auto& row : tx.exec_prepared("sched_draining")) {
          out.push_back(row[0].as<std::string>());
        }
        return absl::OkStatus();
      },
      Durability::kAsync);
  if (!s.ok()) return s;
  return out;
}

absl::Status SchedulerStore::InsertPlacements(const std::vector<StoredPlacement>& placements) {
  if (placements.empty()) return absl::OkStatus();
  std::vector<std::vector<std::string>> cols(6);
  for (const auto& p : placements) {
    cols[0].push_back(p.sandbox_id);
    cols[1].push_back(p.runner_id);
    cols[2].push_back(std::to_string(p.cpu_millis));
    cols[3].push_back(std::to_string(p.memory_mb));
    cols[4].push_back(p.image);
    cols[5].push_back(p.warm ? "true" : "false");
  }
  // Asynchronous commit: the lifecycle's durable RUNNING commit flushes it before any client sees
  // the sandbox; a placement lost in a crash belongs to a create that was never acknowledged.
  return pool_.Execute(
      [&](pqxx::nontransaction& tx) {
        tx.exec_prepared("sched_insert_placements", PgTextArray(cols[0]), PgTextArray(cols[1]),
                         PgTextArray(cols[2]), PgTextArray(cols[3]), PgTextArray(cols[4]),
                         PgTextArray(cols[5]));
        return absl::OkStatus();
      },
      Durability::kAsync);
}

absl::StatusOr<std::vector<bool>> SchedulerStore::DeletePlacements(
    const std::vector<std::string>& sandbox_ids) {
  std::set<std::string> deleted;
  absl::Status s = pool_.Execute(
      [&](pqxx::nontransaction& tx) {
        deleted.clear();
        for (const auto& row : tx.exec_prepared("sched_delete_placements", PgTextArray(sandbox_ids))) {
          deleted.insert(row[0].as<std::string>());
        }
        return absl::OkStatus();
      },
      Durability::kAsync);
  if (!s.ok()) return s;
  std::vector<bool> out;
  for (const auto& id : sandbox_ids) out.push_back(deleted.erase(id) > 0);
  return out;
}

absl::StatusOr<FleetSnapshot> SchedulerStore::Load() {
  FleetSnapshot snap;
  absl::Status s = pool_.Transact([&](pqxx::work& tx) {
    snap = FleetSnapshot{};
    absl::flat_hash_map<std::string, size_t> by_id;
    for (const auto& row : tx.exec(
             "SELECT id, name, address, region, cpu_millis, memory_mb, max_sandboxes, "
             "draining, (extract(epoch FROM last_heartbeat) * 1000000)::bigint, "
             "image_cache_bytes, image_cache_used_bytes FROM scheduler.runners ORDER BY name")) {
      RunnerView r;
      r.id = row[0].as<std::string>();
      r.name = row[1].as<std::string>();
      r.address = row[2].as<std::string>();
      r.region = row[3].as<std::string>();
      r.capacity = {row[4].as<int64_t>(), row[5].as<int64_t>(), row[6].as<int64_t>()};
      r.draining = row[7].as<bool>();
      r.last_heartbeat = absl::FromUnixMicros(row[8].as<int64_t>());
      r.image_cache_bytes = row[9].as<int64_t>();
      r.image_cache_used_bytes = row[10].as<int64_t>();
      by_id[r.id] = snap.runners.size();
      snap.runners.push_back(std::move(r));
    }
    for (const auto& row :
         tx.exec("SELECT runner_id, digest, size_bytes, array_to_string(refs, ' '), "
                 "(extract(epoch FROM last_used) * 1000000)::bigint "
                 "FROM scheduler.runner_images ORDER BY runner_id, digest")) {
      auto it = by_id.find(row[0].c_str());
      if (it == by_id.end()) continue;
      CachedImage img;
      img.digest = row[1].as<std::string>();
      img.size_bytes = row[2].as<int64_t>();
      for (absl::string_view ref : absl::StrSplit(row[3].c_str(), ' ', absl::SkipEmpty())) {
        img.refs.emplace_back(ref);
      }
      if (!row[4].is_null()) img.last_used = absl::FromUnixMicros(row[4].as<int64_t>());
      snap.runners[it->second].images.push_back(std::move(img));
    }
    for (const auto& row :
         tx.exec("SELECT sandbox_id, runner_id, cpu_millis, memory_mb, image, warm, "
                 "(extract(epoch FROM created_at) * 1000000)::bigint FROM scheduler.placements")) {
      snap.placements.push_back(StoredPlacement{row[0].as<std::string>(), row[1].as<std::string>(),
                                                row[2].as<int64_t>(), row[3].as<int64_t>(),
                                                row[4].as<std::string>(), row[5].as<bool>(),
                                                absl::FromUnixMicros(row[6].as<int64_t>())});
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return snap;
}

}  // namespace isorun::scheduler

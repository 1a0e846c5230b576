#include "scheduler/capacity_history_store.h"

#include <pqxx/pqxx>

#include <iterator>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "services/kit/log.h"

namespace isorun::scheduler {
namespace {

constexpr char kInsert[] = "sched_capacity_insert";
constexpr char kFold[] = "sched_capacity_fold";
constexpr char kDeleteRaw[] = "sched_capacity_delete_raw";
constexpr char kDeleteOld[] = "sched_capacity_delete_downsampled";
constexpr char kQuery[] = "sched_capacity_query";
constexpr char kCountSandboxes[] = "sched_capacity_count_sandboxes";

// Column order of both tables after (at, region).
constexpr const char* kGauges[] = {
    "runners_healthy",     "runners_unhealthy",  "runners_lost",        "runners_draining",
    "cpu_capacity_millis", "cpu_allocated_millis", "cpu_free_millis",   "memory_capacity_mb",
    "memory_allocated_mb", "memory_free_mb",     "slots_capacity",      "slots_allocated",
    "slots_free",          "sandboxes",          "cached_images",
    // Migration 0016: appended to both tables, so `SELECT *` of either has this order.
    "sandboxes_pending",   "sandboxes_starting", "sandboxes_running",   "sandboxes_hibernated",
    "sandboxes_destroying"};
constexpr const char* kCounters[] = {"placements_warm", "placements_cold", "capacity_refusals",
                                     "pulls"};

// "round(avg(c))::bigint, ..." then "sum(c)::bigint, ...".
std::string Aggregates() {
  std::vector<std::string> parts;
  for (const char* c : kGauges) parts.push_back(absl::StrCat("round(avg(", c, "))::bigint"));
  for (const char* c : kCounters) parts.push_back(absl::StrCat("sum(", c, ")::bigint"));
  return absl::StrJoin(parts, ", ");
}

std::string Columns() {
  std::vector<std::string> parts(std::begin(kGauges), std::end(kGauges));
  parts.insert(parts.end(), std::begin(kCounters), std::end(kCounters));
  return absl::StrJoin(parts, ", ");
}

std::string Iso(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
}

}  // namespace

CapacityHistoryStore::CapacityHistoryStore(PgPool& pool) : pool_(pool) {
  std::vector<std::string> params;
  for (size_t i = 1; i <= 2 + std::size(kGauges) + std::size(kCounters); ++i) {
    params.push_back(absl::StrCat("$", i));
  }
  params[0] += "::timestamptz";
  pool_.Prepare(kInsert, absl::StrCat("INSERT INTO scheduler.capacity_history (at, region, ",
                                      Columns(), ") VALUES (", absl::StrJoin(params, ", "),
                                      ") ON CONFLICT (at, region) DO NOTHING"));
  pool_.Prepare(kFold,
                absl::StrCat("INSERT INTO scheduler.capacity_history_5m (at, region, ", Columns(),
                             ") SELECT date_bin('5 minutes', at, TIMESTAMPTZ 'epoch') AS b, "
                             "region, ",
                             Aggregates(),
                             " FROM scheduler.capacity_history WHERE at < $1::timestamptz "
                             "GROUP BY b, region ON CONFLICT (at, region) DO NOTHING"));
  // One read of the live rows a snapshot (ended rows, kept for days, are filtered out).
  pool_.Prepare(kCountSandboxes,
                "SELECT coalesce(runner_id, ''), state, count(*) FROM lifecycle.sandboxes "
                "WHERE state IN ('PENDING', 'STARTING', 'RUNNING', 'HIBERNATED', 'DESTROYING') "
                "GROUP BY 1, 2");
  pool_.Prepare(kDeleteRaw, "DELETE FROM scheduler.capacity_history WHERE at < $1::timestamptz");
  pool_.Prepare(kDeleteOld,
                "DELETE FROM scheduler.capacity_history_5m WHERE at < $1::timestamptz");
  pool_.Prepare(
      kQuery,
      absl::StrCat(
          "SELECT region, extract(epoch FROM date_bin(make_interval(secs => $3::float8), at, "
          "$1::timestamptz))::bigint AS b, ",
          Aggregates(),
          " FROM (SELECT * FROM scheduler.capacity_history "
          "WHERE at >= $1::timestamptz AND at < $2::timestamptz "
          "UNION ALL SELECT * FROM scheduler.capacity_history_5m "
          "WHERE at >= $1::timestamptz AND at < $2::timestamptz) h "
          "WHERE $4::text = '' OR region = '' OR region = $4::text "
          "GROUP BY region, b ORDER BY region, b"));
}

absl::Status CapacityHistoryStore::Insert(const std::vector<CapacitySample>& samples) {
  return pool_.Transact([&](pqxx::work& tx) {
    for (const CapacitySample& s : samples) {
      tx.exec_prepared(kInsert, Iso(s.at), s.region, s.runners_healthy, s.runners_unhealthy,
                       s.runners_lost, s.runners_draining, s.capacity.cpu_millis,
                       s.allocated.cpu_millis, s.free.cpu_millis, s.capacity.memory_mb,
                       s.allocated.memory_mb, s.free.memory_mb, s.capacity.sandboxes,
                       s.allocated.sandboxes, s.free.sandboxes, s.sandboxes, s.images,
                       s.sandboxes_pending, s.sandboxes_starting, s.sandboxes_running,
                       s.sandboxes_hibernated, s.sandboxes_destroying, s.placements_warm, s.placements_cold, s.capacity_refusals, s.pulls);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int64_t> CapacityHistoryStore::Compact(absl::Time raw_before,
                                                      absl::Time downsampled_before) {
  // Whole buckets only: the cut goes down to a 5-minute boundary.
  const int64_t cut = absl::ToUnixSeconds(raw_before) / 300 * 300;
  const std::string cut_text = Iso(absl::FromUnixSeconds(cut));
  int64_t folded = 0;
  absl::Status st = pool_.Transact([&](pqxx::work& tx) {
    tx.exec_prepared(kFold, cut_text);
    folded = static_cast<int64_t>(tx.exec_prepared(kDeleteRaw, cut_text).affected_rows());
    tx.exec_prepared(kDeleteOld, Iso(downsampled_before));
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return folded;
}

absl::StatusOr<std::vector<CapacitySample>> CapacityHistoryStore::Query(absl::Time from,
                                                                        absl::Time to,
                                                                        absl::Duration step,
                                                                        const std::string& region) {
  std::vector<CapacitySample> out;
  absl::Status st = pool_.Transact([&](pqxx::work& tx) {
    out.clear();
    pqxx::result r = tx.exec_prepared(kQuery, Iso(from), Iso(to), absl::ToDoubleSeconds(step),
                                      region);
    for (const auto& row : r) {
      CapacitySample s;
      s.region = row[0].as<std::string>();
      s.at = absl::FromUnixSeconds(row[1].as<int64_t>());
      int i = 2;
      auto next = [&] { return row[i++].as<int64_t>(); };
      s.runners_healthy = next();
      s.runners_unhealthy = next();
      s.runners_lost = next();
      s.runners_draining = next();
      s.capacity.cpu_millis = next();
      s.allocated.cpu_millis = next();
      s.free.cpu_millis = next();
      s.capacity.memory_mb = next();
      s.allocated.memory_mb = next();
      s.free.memory_mb = next();
      s.capacity.sandboxes = next();
      s.allocated.sandboxes = next();
      s.free.sandboxes = next();
      s.sandboxes = next();
      s.images = next();
      s.sandboxes_pending = next();
      s.sandboxes_starting = next();
      s.sandboxes_running = next();
      s.sandboxes_hibernated = next();
      s.sandboxes_destroying = next();
      s.placements_warm = next();
      s.placements_cold = next();
      s.capacity_refusals = next();
      s.pulls = next();
      out.push_back(std::move(s));
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<std::vector<SandboxStateCount>> CapacityHistoryStore::CountSandboxes() {
  std::vector<SandboxStateCount> out;
  absl::Status st = pool_.Execute([&](pqxx::nontransaction& tx) {
    out.clear();
    for (const auto& row : tx.exec_prepared(kCountSandboxes)) {
      out.push_back({row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<int64_t>()});
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

CapacityRecorder::CapacityRecorder(CapacityHistoryStore& store, RunnersFn runners,
                                   CountersFn counters, Options options, StatesFn states)
    : store_(store),
      runners_(std::move(runners)),
      counters_(std::move(counters)),
      states_(std::move(states)),
      options_(options) {}

CapacityRecorder::~CapacityRecorder() { Stop(); }

void CapacityRecorder::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] {
    bool failing = false;
    do {
      absl::Status st = RecordOnce(absl::Now());
      if (!st.ok() && !failing) {
        LogWarn("cannot record a capacity snapshot; will retry",
                {{"error", std::string(st.message())}});
      }
      failing = !st.ok();
    } while (!stop_.WaitForNotificationWithTimeout(options_.interval));
  });
}

void CapacityRecorder::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::Status CapacityRecorder::RecordOnce(absl::Time now) {
  // One row per interval, the same instant for every replica.
  const int64_t every = std::max<int64_t>(1, absl::ToInt64Seconds(options_.interval));
  const absl::Time at = absl::FromUnixSeconds(absl::ToUnixSeconds(now) / every * every);
  const std::vector<RunnerStatus> runners = runners_();
  std::vector<CapacitySample> samples = Summarize(runners, at);
  const CapacityCounters fleet_now = counters_();
  // A region where creates were refused for capacity gets a row even without runners (all of
  // its creates are refused then: the row an operator most needs).
  for (const auto& [region, n] : fleet_now.region_refusals) {
    if (region.empty()) continue;
    bool known = false;
    for (const CapacitySample& s : samples) known = known || s.region == region;
    if (!known) {
      CapacitySample empty;
      empty.at = at;
      empty.region = region;
      samples.push_back(empty);
    }
  }
  if (states_) {
    auto counts = states_();
    if (!counts.ok()) return counts.status();
    std::map<std::string, std::string> regions;
    for (const RunnerStatus& r : runners) regions[r.view.id] = r.view.region;
    AddSandboxStates(*counts, regions, samples);
  }
  for (CapacitySample& s : samples) {
    // Per region: warm and cold from the runners' counts, refusals by the region asked for;
    // pulls are a fleet-wide counter.
    CapacityCounters cumulative{s.placements_warm, s.placements_cold, 0, 0};
    if (s.region.empty()) {
      cumulative.capacity_refusals = fleet_now.capacity_refusals;
      cumulative.pulls = fleet_now.pulls;
    } else if (auto r = fleet_now.region_refusals.find(s.region);
               r != fleet_now.region_refusals.end()) {
      cumulative.capacity_refusals = r->second;
    }
    CapacityCounters& previous = s.region.empty() ? previous_fleet_ : previous_regions_[s.region];
    CapacityCounters delta =
        have_previous_ ? CounterDelta(cumulative, previous) : CapacityCounters{};
    previous = cumulative;
    s.placements_warm = delta.placements_warm;
    s.placements_cold = delta.placements_cold;
    s.capacity_refusals = delta.capacity_refusals;
    s.pulls = delta.pulls;
  }
  have_previous_ = true;
  absl::Status st = store_.Insert(samples);
  if (!st.ok()) return st;
  if (now - last_compact_ >= options_.compact_every) {
    last_compact_ = now;
    auto folded =
        store_.Compact(now - options_.raw_retention, now - options_.downsampled_retention);
    if (!folded.ok()) return folded.status();
  }
  return absl::OkStatus();
}

}  // namespace isorun::scheduler

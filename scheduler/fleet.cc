#include "scheduler/fleet.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "services/kit/log.h"
#include "services/kit/status.h"

namespace isorun::scheduler {
namespace {

const char* const kStates[] = {"HEALTHY", "UNHEALTHY", "LOST", "DRAINING"};

ResourceVector Amount(const StoredPlacement& p) { return {p.cpu_millis, p.memory_mb, 1}; }

ResourceVector NonNegative(ResourceVector v) {
  v.cpu_millis = std::max<int64_t>(0, v.cpu_millis);
  v.memory_mb = std::max<int64_t>(0, v.memory_mb);
  v.sandboxes = std::max<int64_t>(0, v.sandboxes);
  return v;
}

std::vector<std::tuple<std::string, int64_t, std::vector<std::string>>> Identity(
    const std::vector<CachedImage>& images) {
  std::vector<std::tuple<std::string, int64_t, std::vector<std::string>>> out;
  out.reserve(images.size());
  for (const auto& img : images) {
    std::vector<std::string> refs = img.refs;
    std::sort(refs.begin(), refs.end());
    out.emplace_back(img.digest, img.size_bytes, std::move(refs));
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

bool SameImages(const std::vector<CachedImage>& a, const std::vector<CachedImage>& b) {
  if (a.size() != b.size()) return false;
  return Identity(a) == Identity(b);
}

namespace {

// A LOST runner must never look healthy to placement.
FleetOptions Normalized(FleetOptions o) {
  o.policy.healthy_within = std::min(o.policy.healthy_within, o.lost_after);
  return o;
}

}  // namespace

Fleet::Fleet(FleetStore& store, Clock clock, FleetOptions options)
    : store_(store),
      clock_(std::move(clock)),
      options_(Normalized(options)),
      policy_(options_.policy),
      demand_(options.prewarm.window),
      planner_(options.prewarm) {
  absl::MutexLock lock(&mu_);
  state_.set_demand_window(options_.spread_window);
}

Fleet::Tracking& Fleet::TrackingOf(RunnerIndex r) {
  if (tracking_.size() <= r) tracking_.resize(r + 1);
  return tracking_[r];
}

absl::Status Fleet::Load() {
  auto snap = store_.Load();
  if (!snap.ok()) return snap.status();
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_();
  // What this process heard from runners itself (a leader that lost its lock's connection and won
  // it again kept its heartbeat streams open meanwhile): fresher than the store's coarse
  // last-seen and image lists, and the runner will not resend unchanged lists on a stream that
  // stayed open. Forgetting it would make every live runner UNHEALTHY until its next heartbeat.
  struct Heard {
    RunnerView view;
    bool disconnected = false;
    Tracking tracking;
  };
  absl::flat_hash_map<std::string, Heard> heard;
  for (RunnerIndex i = 0; i < state_.size(); ++i) {
    if (TrackingOf(i).heard == absl::InfinitePast()) continue;  // loaded, never heard
    Heard h{state_.View(i), state_.slot(i).disconnected, TrackingOf(i)};
    heard.emplace(h.view.id, std::move(h));
  }
  state_ = FleetState();
  state_.set_demand_window(options_.spread_window);
  tracking_.clear();
  placements_.clear();
  std::vector<RunnerIndex> kept;
  for (auto& r : snap->runners) {
    auto h = heard.find(r.id);
    if (h != heard.end() && h->second.tracking.heard >= r.last_heartbeat) {
      // Registration facts (name, address, region, draining) come from the store; what the
      // heartbeats said comes from memory.
      const RunnerView& v = h->second.view;
      r.last_heartbeat = v.last_heartbeat;
      r.capacity = v.capacity;
      r.images = v.images;
      r.sandbox_ids = v.sandbox_ids;
      r.image_cache_used_bytes = v.image_cache_used_bytes;
      RunnerIndex i = state_.Upsert(r);
      state_.mutable_slot(i).disconnected = h->second.disconnected;
      Tracking& t = TrackingOf(i);
      const Tracking& old = h->second.tracking;
      t.stream = old.stream;
      t.heard = old.heard;
      t.reported = old.reported;
      t.unplaced_since = old.unplaced_since;
      t.persisted_seen = old.persisted_seen;
      t.images_dirty = old.images_dirty;
      t.capacity_dirty = old.capacity_dirty;
      kept.push_back(i);
      continue;
    }
    // Nobody could be heard while the scheduler was down: silence counts from the load at most.
    r.last_heartbeat =
        std::max(r.last_heartbeat, now - options_.policy.healthy_within - absl::Milliseconds(1));
    RunnerIndex i = state_.Upsert(r);
    // Only a real heartbeat moves the stored last-seen on.
    TrackingOf(i).persisted_seen = r.last_heartbeat;
  }
  for (auto& p : snap->placements) {
    auto r = state_.Find(p.runner_id);
    if (!r) continue;
    state_.Reserve(*r, Amount(p));
    Tracking& t = TrackingOf(*r);
    t.placed[p.sandbox_id] = Amount(p);
    (p.warm ? t.warm : t.cold) += 1;
    placements_[p.sandbox_id] = std::move(p);
  }
  // Sandboxes the runners reported beyond the placements just loaded.
  for (RunnerIndex i : kept) RecomputeExtra(i, now);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Fleet::Register(RunnerView runner) {
  runner.last_heartbeat = clock_();
  auto stored = store_.UpsertRunner(runner);
  if (!stored.ok()) return stored.status();
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_();
  runner.id = stored->first;
  runner.draining = stored->second;
  runner.last_heartbeat = now;
  RunnerIndex r = state_.Upsert(runner);
  Tracking& t = TrackingOf(r);
  t.persisted_seen = now;
  t.heard = now;
  t.images_dirty = false;
  t.unplaced_since.clear();
  RecomputeExtra(r, now);
  return stored->first;
}

void Fleet::RecomputeExtra(RunnerIndex r, absl::Time now) {
  Tracking& t = tracking_[r];
  const RunnerRecord& rec = state_.record(r);
  ResourceVector known;
  int64_t unplaced = 0;
  absl::flat_hash_map<std::string, absl::Time> since;
  for (const auto& id : rec.sandbox_ids) {
    if (auto p = t.placed.find(id); p != t.placed.end()) {
      known += p->second;
      continue;
    }
    auto old = t.unplaced_since.find(id);
    const absl::Time first = old == t.unplaced_since.end() ? now : old->second;
    since.emplace(id, first);
    if (now - first >= options_.unplaced_grace) ++unplaced;
  }
  t.unplaced_since = std::move(since);
  t.recheck = false;
  ResourceVector extra;
  extra.sandboxes = unplaced;
  if (unplaced > 0) {
    // Cpu and memory of sandboxes nobody placed are only known when the runner reports them.
    extra.cpu_millis = std::max<int64_t>(0, t.reported.cpu_millis - known.cpu_millis);
    extra.memory_mb = std::max<int64_t>(0, t.reported.memory_mb - known.memory_mb);
  }
  state_.mutable_slot(r).extra = extra;
}

absl::Status Fleet::Heartbeat(HeartbeatReport report) {
  absl::MutexLock lock(&mu_);
  auto found = state_.Find(report.runner_id);
  if (!found) return absl::NotFoundError(absl::StrCat("unknown runner ", report.runner_id));
  const RunnerIndex r = *found;
  const absl::Time now = clock_();
  RunnerSlot& slot = state_.mutable_slot(r);
  slot.last_heartbeat = now;
  slot.disconnected = false;
  Tracking& t = TrackingOf(r);
  t.heard = now;
  if (report.stream != 0) t.stream = report.stream;
  t.reported = report.allocated;
  if (report.capacity && *report.capacity != slot.capacity) {
    slot.capacity = *report.capacity;
    t.capacity_dirty = true;
  }
  RunnerRecord& rec = state_.mutable_record(r);
  if (report.image_cache_used_bytes &&
      *report.image_cache_used_bytes != rec.image_cache_used_bytes) {
    rec.image_cache_used_bytes = *report.image_cache_used_bytes;
    t.images_dirty = true;
  }
  if (report.images) {
    // Only a different set of images is worth writing down; a fresher last use is kept in memory.
    if (!SameImages(*report.images, rec.images)) t.images_dirty = true;
    state_.SetImages(r, std::move(*report.images));
  }
  if (report.sandbox_ids) {
    rec.sandbox_ids = std::move(*report.sandbox_ids);
    RecomputeExtra(r, now);
  } else if (t.recheck || !t.unplaced_since.empty()) {
    RecomputeExtra(r, now);
  }
  return absl::OkStatus();
}

void Fleet::StreamEnded(const std::string& runner_id, uint64_t stream) {
  absl::MutexLock lock(&mu_);
  auto r = state_.Find(runner_id);
  if (!r) return;
  if (TrackingOf(*r).stream != stream) return;  // a newer stream took over
  state_.mutable_slot(*r).disconnected = true;
}

PlacementResult Fleet::ResultFor(RunnerIndex r, bool warm) const {
  const RunnerRecord& rec = state_.record(r);
  return PlacementResult{rec.id, rec.name, rec.address, warm};
}

absl::StatusOr<PlacementResult> Fleet::Place(const std::string& sandbox_id,
                                             const PlacementRequest& request) {
  return PlaceMany({PlaceItem{sandbox_id, request}})[0];
}

std::vector<absl::StatusOr<PlacementResult>> Fleet::PlaceMany(
    const std::vector<PlaceItem>& items) {
  std::vector<absl::StatusOr<PlacementResult>> out(items.size(), PlacementResult{});
  std::vector<StoredPlacement> placed;  // new placements, to persist
  std::vector<size_t> placed_items;     // the item each was made for
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string& sandbox_id = items[i].sandbox_id;
      const PlacementRequest& request = items[i].request;
      if (sandbox_id.empty()) {
        out[i] = absl::InvalidArgumentError("sandbox id is empty");
        continue;
      }
      if (request.cpu_millis < 0 || request.memory_mb < 0) {
        out[i] = absl::InvalidArgumentError("cpu and memory requests cannot be negative");
        continue;
      }
      if (auto existing = placements_.find(sandbox_id); existing != placements_.end()) {
        if (auto r = state_.Find(existing->second.runner_id)) {
          out[i] = ResultFor(*r, existing->second.warm);
          continue;
        }
      }
      const absl::Time now = clock_();
      auto decision = policy_.Choose(state_, request, now, rng_);
      demand_.Record(now, request.region, request.image, decision.has_value() && decision->warm);
      if (!decision) {
        out[i] = Error(absl::StatusCode::kResourceExhausted, "CAPACITY",
                       absl::StrCat("no runner has room for ", request.cpu_millis,
                                    " cpu millis and ", request.memory_mb,
                                    " MB now; this is platform capacity, not your limit: retry "
                                    "later"),
                       0, 0, 2);
        continue;
      }
      const RunnerIndex r = decision->runner_index;
      state_.RecordPlacement(decision->image);
      StoredPlacement placement{sandbox_id,        state_.record(r).id, request.cpu_millis,
                                request.memory_mb, request.image,       decision->warm,
                                now};
      state_.Reserve(r, Amount(placement));
      Tracking& t = TrackingOf(r);
      t.placed[sandbox_id] = Amount(placement);
      (decision->warm ? t.warm : t.cold) += 1;
      placements_[sandbox_id] = placement;
      out[i] = ResultFor(r, decision->warm);
      placed.push_back(std::move(placement));
      placed_items.push_back(i);
    }
  }
  if (placed.empty()) return out;
  if (absl::Status s = store_.InsertPlacements(placed); !s.ok()) {
    absl::MutexLock lock(&mu_);
    for (size_t k = 0; k < placed.size(); ++k) {
      if (auto p = placements_.find(placed[k].sandbox_id); p != placements_.end()) {
        Unplace(p->second);
        placements_.erase(p);
      }
      out[placed_items[k]] = s;
    }
  }
  return out;
}

void Fleet::Unplace(const StoredPlacement& p) {
  auto r = state_.Find(p.runner_id);
  if (!r) return;
  Tracking& t = TrackingOf(*r);
  auto it = t.placed.find(p.sandbox_id);
  if (it == t.placed.end()) return;
  state_.Unreserve(*r, it->second);
  t.placed.erase(it);
  t.recheck = true;
}

absl::StatusOr<bool> Fleet::Release(const std::string& sandbox_id) {
  return ReleaseMany({sandbox_id})[0];
}

std::vector<absl::StatusOr<bool>> Fleet::ReleaseMany(const std::vector<std::string>& sandbox_ids) {
  // The store first: if it fails the caller retries, and memory still matches the table.
  auto deleted = store_.DeletePlacements(sandbox_ids);
  if (!deleted.ok()) {
    return std::vector<absl::StatusOr<bool>>(sandbox_ids.size(), deleted.status());
  }
  std::vector<absl::StatusOr<bool>> out;
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < sandbox_ids.size(); ++i) {
    auto p = placements_.find(sandbox_ids[i]);
    if (p == placements_.end()) {
      out.push_back(static_cast<bool>((*deleted)[i]));
      continue;
    }
    Unplace(p->second);
    placements_.erase(p);
    out.push_back(true);
  }
  return out;
}

absl::StatusOr<PlacementResult> Fleet::Get(const std::string& sandbox_id) {
  absl::MutexLock lock(&mu_);
  auto p = placements_.find(sandbox_id);
  if (p == placements_.end()) {
    return absl::NotFoundError(absl::StrCat("no placement for ", sandbox_id));
  }
  auto r = state_.Find(p->second.runner_id);
  if (!r) return absl::NotFoundError("placement on an unknown runner");
  return ResultFor(*r, p->second.warm);
}

std::vector<Fleet::PlacementInfo> Fleet::ListPlacements(absl::Duration min_age,
                                                        const std::string& after, int limit) {
  absl::MutexLock lock(&mu_);
  const absl::Time cutoff = clock_() - min_age;
  std::vector<PlacementInfo> out;
  for (auto it = placements_.upper_bound(after);
       it != placements_.end() && static_cast<int>(out.size()) < limit; ++it) {
    if (it->second.created > cutoff) continue;
    auto r = state_.Find(it->second.runner_id);
    if (!r) continue;
    out.push_back({it->first, ResultFor(*r, it->second.warm)});
  }
  return out;
}

std::string Fleet::StateOf(RunnerIndex r, absl::Time now) const {
  const RunnerSlot& s = state_.slot(r);
  if (now - s.last_heartbeat > options_.lost_after) return "LOST";
  if (!IsHealthy(s, now, options_.policy)) return "UNHEALTHY";
  if (s.draining) return "DRAINING";
  return "HEALTHY";
}

std::vector<RunnerStatus> Fleet::List() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_();
  std::vector<RunnerStatus> out;
  out.reserve(state_.size());
  for (RunnerIndex r = 0; r < state_.size(); ++r) {
    const RunnerSlot& s = state_.slot(r);
    const RunnerRecord& rec = state_.record(r);
    RunnerStatus st;
    st.view = state_.View(r);
    st.state = StateOf(r, now);
    st.reserved = s.reserved;
    const Tracking& t = TrackingOf(r);
    st.placements_warm = t.warm;
    st.placements_cold = t.cold;
    st.pulling = rec.pulling;
    out.push_back(std::move(st));
  }
  std::sort(out.begin(), out.end(),
            [](const RunnerStatus& a, const RunnerStatus& b) { return a.view.name < b.view.name; });
  return out;
}

FleetTotals Fleet::Totals() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_();
  FleetTotals t;
  for (const char* s : kStates) t.runners_by_state[s] = 0;
  for (RunnerIndex r = 0; r < state_.size(); ++r) {
    const RunnerSlot& s = state_.slot(r);
    const std::string st = StateOf(r, now);
    ++t.runners_by_state[st];
    const ResourceVector free = NonNegative(s.capacity - s.allocated());
    t.capacity += s.capacity;
    t.allocated += s.allocated();
    t.free += free;
    if (st == "HEALTHY") {
      t.schedulable_capacity += s.capacity;
      t.schedulable_free += free;
    }
    t.pulls_in_flight += static_cast<int64_t>(state_.record(r).pulling.size());
  }
  for (ImageId id = 0; id < static_cast<ImageId>(state_.image_count()); ++id) {
    if (!state_.Holders(id).empty()) ++t.images;
  }
  t.placements = static_cast<int64_t>(placements_.size());
  return t;
}

absl::Status Fleet::Sync() {
  std::vector<std::pair<std::string, absl::Time>> seen;
  std::vector<RunnerImages> images;
  std::vector<RunnerView> resized;  // rare: rewritten whole
  {
    absl::MutexLock lock(&mu_);
    for (RunnerIndex r = 0; r < state_.size(); ++r) {
      Tracking& t = TrackingOf(r);
      const RunnerSlot& s = state_.slot(r);
      const RunnerRecord& rec = state_.record(r);
      if (s.last_heartbeat - t.persisted_seen >= options_.last_seen_every) {
        seen.emplace_back(rec.id, s.last_heartbeat);
      }
      if (t.images_dirty) {
        images.push_back({rec.id, rec.images, rec.image_cache_used_bytes});
        t.images_dirty = false;
      }
      if (t.capacity_dirty) {
        resized.push_back(state_.View(r));
        t.capacity_dirty = false;
      }
    }
  }
  absl::Status first = store_.TouchRunners(seen);
  std::vector<std::string> not_resized;
  for (const auto& v : resized) {
    if (auto s = store_.UpsertRunner(v); !s.ok()) {
      not_resized.push_back(v.name);
      if (first.ok()) first = s.status();
    }
  }
  absl::Status images_written = store_.ReplaceImages(images);
  auto draining = store_.DrainingRunners();
  absl::MutexLock lock(&mu_);
  if (first.ok()) {
    for (const auto& [id, when] : seen) {
      if (auto r = state_.Find(id)) {
        Tracking& t = TrackingOf(*r);
        t.persisted_seen = std::max(t.persisted_seen, when);
      }
    }
  }
  for (const auto& name : not_resized) {
    for (RunnerIndex r = 0; r < state_.size(); ++r) {
      if (state_.record(r).name == name) TrackingOf(r).capacity_dirty = true;
    }
  }
  if (!images_written.ok()) {
    for (const auto& ri : images) {
      if (auto r = state_.Find(ri.runner_id)) TrackingOf(*r).images_dirty = true;
    }
    if (first.ok()) first = images_written;
  }
  if (draining.ok()) {
    absl::flat_hash_set<std::string> marked(draining->begin(), draining->end());
    for (RunnerIndex r = 0; r < state_.size(); ++r) {
      state_.mutable_slot(r).draining = marked.contains(state_.record(r).id);
    }
  } else if (first.ok()) {
    first = draining.status();
  }
  return first;
}

std::vector<PullTask> Fleet::StartPrewarmRound() {
  absl::MutexLock lock(&mu_);
  std::vector<PullTask> tasks = planner_.Plan(state_, demand_, options_.policy, clock_(), rng_);
  for (const auto& task : tasks) {
    RunnerRecord& rec = state_.mutable_record(task.runner);
    rec.pulling.push_back(task.image);
    rec.pulling_bytes += task.bytes;
  }
  return tasks;
}

void Fleet::FinishPull(const PullTask& task, const absl::StatusOr<CachedImage>& pulled) {
  absl::MutexLock lock(&mu_);
  auto r = state_.Find(task.runner_id);
  if (!r) return;
  RunnerRecord& rec = state_.mutable_record(*r);
  auto it = std::find(rec.pulling.begin(), rec.pulling.end(), task.image);
  if (it != rec.pulling.end()) {
    rec.pulling.erase(it);
    rec.pulling_bytes = std::max<int64_t>(0, rec.pulling_bytes - task.bytes);
  }
  if (!pulled.ok()) return;
  CachedImage image = *pulled;
  if (std::find(image.refs.begin(), image.refs.end(), task.image) == image.refs.end() &&
      PinnedDigest(task.image).empty()) {
    image.refs.push_back(task.image);
  }
  if (image.last_used == absl::InfinitePast()) image.last_used = clock_();
  const bool had = state_.Holds(*r, state_.Resolve(task.image));
  state_.AddImage(*r, std::move(image));
  if (!had) TrackingOf(*r).images_dirty = true;
}

double Fleet::PrewarmBoost(const std::string& region) {
  absl::MutexLock lock(&mu_);
  return planner_.boost(region);
}

}  // namespace isorun::scheduler

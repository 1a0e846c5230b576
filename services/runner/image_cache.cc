#include "services/runner/image_cache.h"

#include <stdio.h>
#include <sys/stat.h>

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/kit/ids.h"
#include "services/kit/log.h"
#include "services/runner/fs_util.h"

namespace isorun::runner {
namespace {

constexpr char kMetaFile[] = "image.meta";
constexpr int kMaxLeaseAttempts = 4;

std::string HexOf(const std::string& digest) { return digest.substr(digest.find(':') + 1); }

// image.meta: one "key value" line each, values C-escaped.
std::string FormatMeta(const std::string& digest, int64_t size, absl::Time last_used,
                       const std::set<std::string>& tags, const std::set<std::string>& names,
                       const ImageConfig& config) {
  std::string out;
  absl::StrAppend(&out, "digest ", digest, "\n", "size ", size, "\n", "last_used ",
                  absl::ToUnixMillis(last_used), "\n", "cwd ", absl::CEscape(config.cwd), "\n");
  for (const auto& t : tags) absl::StrAppend(&out, "tag ", absl::CEscape(t), "\n");
  for (const auto& n : names) absl::StrAppend(&out, "name ", absl::CEscape(n), "\n");
  for (const auto& e : config.env) absl::StrAppend(&out, "env ", absl::CEscape(e), "\n");
  return out;
}

}  // namespace

ImageCache::ImageCache(ImageCacheOptions options, ImageFetcher& fetcher)
    : options_(std::move(options)), fetcher_(fetcher) {}

std::string ImageCache::EntryDir(const std::string& digest) const {
  return absl::StrCat(options_.dir, "/", HexOf(digest));
}

absl::Status ImageCache::Load() {
  // 0700: the unpacked files belong to the sandboxes' uid range; host users have no business
  // there (a set-uid file of an image must not be reachable from the host).
  if (absl::Status s = MakeDirs(options_.dir, 0700); !s.ok()) return s;
  for (const char* sub : {"tmp", "trash"}) {
    std::string d = absl::StrCat(options_.dir, "/", sub);
    if (absl::Status s = RemoveTree(d); !s.ok()) {
      LogWarn("cannot empty image cache scratch dir", {{"dir", d}, {"error", s.ToString()}});
    }
    if (absl::Status s = MakeDirs(d, 0700); !s.ok()) return s;
  }
  std::vector<std::string> trash;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& name : ListDir(options_.dir)) {
      if (name == "tmp" || name == "trash") continue;
      const std::string dir = absl::StrCat(options_.dir, "/", name);
      const std::string digest = absl::StrCat("sha256:", name);
      auto meta = ReadFile(absl::StrCat(dir, "/", kMetaFile));
      bool ok = IsSha256Digest(digest) && meta.ok() && PathExists(absl::StrCat(dir, "/rootfs"));
      Entry entry;
      entry.digest = digest;
      if (ok) {
        for (absl::string_view line : absl::StrSplit(*meta, '\n', absl::SkipEmpty())) {
          size_t sp = line.find(' ');
          if (sp == absl::string_view::npos) continue;
          std::string key(line.substr(0, sp));
          std::string value;
          if (!absl::CUnescape(line.substr(sp + 1), &value)) {
            ok = false;
            break;
          }
          int64_t n = 0;
          if (key == "digest") {
            ok = ok && value == digest;
          } else if (key == "size" && absl::SimpleAtoi(value, &n)) {
            entry.size_bytes = n;
          } else if (key == "last_used" && absl::SimpleAtoi(value, &n)) {
            entry.last_used = absl::FromUnixMillis(n);
          } else if (key == "cwd") {
            entry.config.cwd = value;
          } else if (key == "tag") {
            entry.tags.insert(value);
          } else if (key == "name") {
            entry.names.insert(value);
          } else if (key == "env") {
            entry.config.env.push_back(value);
          }
        }
      }
      if (!ok) {
        LogWarn("removing incomplete image cache entry", {{"dir", dir}});
        std::string to = absl::StrCat(options_.dir, "/trash/", name);
        if (::rename(dir.c_str(), to.c_str()) == 0) trash.push_back(to);
        continue;
      }
      total_bytes_ += entry.size_bytes;
      for (const auto& t : entry.tags) tags_[t] = digest;
      entries_[digest] = std::move(entry);
    }
    auto evicted = EvictLocked("");
    trash.insert(trash.end(), evicted.begin(), evicted.end());
    LogInfo("image cache loaded", {{"dir", options_.dir},
                                   {"images", std::to_string(entries_.size())},
                                   {"bytes", std::to_string(total_bytes_)}});
  }
  EmptyTrash(trash);
  return absl::OkStatus();
}

ImageLease ImageCache::LeaseLocked(Entry& entry, const std::string& holder, bool warm) {
  entry.holders.insert(holder);
  entry.last_used = absl::Now();
  // last_used decides eviction after a restart too; a failed write only makes it staler.
  (void)PersistLocked(entry);
  ImageLease lease;
  lease.digest = entry.digest;
  lease.rootfs = absl::StrCat(EntryDir(entry.digest), "/rootfs");
  lease.config = entry.config;
  lease.warm = warm;
  return lease;
}

void ImageCache::RememberRefLocked(Entry& entry, const ImageRef& ref) {
  bool changed = entry.names.insert(ref.Name()).second;
  if (!ref.tag.empty()) {
    std::string tagged = absl::StrCat(ref.Name(), ":", ref.tag);
    changed = entry.tags.insert(tagged).second || changed;
    tags_[tagged] = entry.digest;
  }
  if (changed) (void)PersistLocked(entry);
}

absl::Status ImageCache::PersistLocked(const Entry& entry, bool sync) {
  return WriteFileAtomic(absl::StrCat(EntryDir(entry.digest), "/", kMetaFile),
                         FormatMeta(entry.digest, entry.size_bytes, entry.last_used, entry.tags,
                                    entry.names, entry.config),
                         sync);
}

std::optional<PullProgress> ImageCache::Progress(const std::string& image) {
  auto ref = ParseImageRef(image, options_.default_registry);
  if (!ref.ok()) return std::nullopt;
  std::string digest, dir;
  ImageRef pulled;
  int64_t total = 0;
  bool ask_size = false;
  {
    absl::MutexLock lock(&mu_);
    auto r = ref_pulls_.find(ref->ToString());
    if (r == ref_pulls_.end()) return std::nullopt;
    digest = r->second.digest;
    auto d = digest.empty() ? digest_pulls_.end() : digest_pulls_.find(digest);
    // Resolving the tag, or waiting for another reference's pull of the same digest to begin.
    if (d == digest_pulls_.end()) return PullProgress{"PULLING", 0, 0};
    dir = d->second.dir;
    pulled = d->second.ref;
    total = d->second.total;
    if (total < 0) {
      d->second.total = 0;  // asked once, by this call
      ask_size = true;
    }
  }
  if (ask_size) {
    auto size = fetcher_.CompressedSize(pulled, digest);
    total = size.ok() ? *size : 0;
    absl::MutexLock lock(&mu_);
    auto d = digest_pulls_.find(digest);
    if (d != digest_pulls_.end()) d->second.total = total;
  }
  PullProgress out;
  struct stat st;
  // The fetcher unpacks into dir/bundle once the download is complete (skopeo_fetcher.h).
  if (::stat(absl::StrCat(dir, "/bundle").c_str(), &st) == 0) {
    out.phase = "UNPACKING";
    out.bytes_done = out.bytes_total = total;
    return out;
  }
  out.phase = "PULLING";
  out.bytes_done = DiskUsage(absl::StrCat(dir, "/layout"));
  out.bytes_total = total;
  // The layout holds a few small files besides the blobs: never show more than all of it.
  if (total > 0 && out.bytes_done > total) out.bytes_done = total;
  return out;
}

absl::StatusOr<ImageLease> ImageCache::Acquire(const std::string& image,
                                               const std::string& holder) {
  auto ref = ParseImageRef(image, options_.default_registry);
  if (!ref.ok()) return ref.status();
  bool waited = false;
  for (int attempt = 0; attempt < kMaxLeaseAttempts; ++attempt) {
    {
      absl::MutexLock lock(&mu_);
      std::string digest = ref->digest;
      if (digest.empty()) {
        auto t = tags_.find(absl::StrCat(ref->Name(), ":", ref->tag));
        if (t != tags_.end()) digest = t->second;
      }
      auto e = digest.empty() ? entries_.end() : entries_.find(digest);
      if (e != entries_.end()) {
        RememberRefLocked(e->second, *ref);
        return LeaseLocked(e->second, holder, !waited);
      }
    }
    // Cold: one resolve and pull per reference at a time; everyone else waits for it.
    if (absl::Status s =
            SingleFlight(absl::StrCat("ref ", ref->ToString()), [&] { return PullRef(*ref); });
        !s.ok()) {
      return s;
    }
    waited = true;
  }
  // Only when other pulls evict this image between its pull and our lease, again and again.
  return absl::UnavailableError(
      absl::StrCat("image ", image,
                   " was evicted from the runner's cache while starting; the cache budget is "
                   "too small for the images in use"));
}

absl::StatusOr<ImageLease> ImageCache::AcquireDigest(const std::string& digest,
                                                     const std::string& holder) {
  absl::MutexLock lock(&mu_);
  auto e = entries_.find(digest);
  if (e == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("image ", digest, " is not in the cache"));
  }
  return LeaseLocked(e->second, holder, true);
}

void ImageCache::Release(const std::string& digest, const std::string& holder) {
  std::vector<std::string> trash;
  {
    absl::MutexLock lock(&mu_);
    auto e = entries_.find(digest);
    if (e == entries_.end() || e->second.holders.erase(holder) == 0) return;
    e->second.last_used = absl::Now();
    (void)PersistLocked(e->second);
    trash = EvictLocked("");
  }
  EmptyTrash(trash);
}

absl::Status ImageCache::PullRef(const ImageRef& ref) {
  const std::string key = ref.ToString();
  {
    absl::MutexLock lock(&mu_);
    RefPull& pull = ref_pulls_[key];
    ++pull.callers;
    pull.digest = ref.digest;
  }
  absl::Cleanup forget = [&] {
    absl::MutexLock lock(&mu_);
    auto it = ref_pulls_.find(key);
    if (it != ref_pulls_.end() && --it->second.callers <= 0) ref_pulls_.erase(it);
  };
  std::string digest = ref.digest;
  if (digest.empty()) {
    auto resolved = fetcher_.Resolve(ref);
    {
      absl::MutexLock lock(&mu_);
      ++stats_.resolves;
    }
    if (!resolved.ok()) return resolved.status();
    digest = *resolved;
  }
  {
    absl::MutexLock lock(&mu_);
    ref_pulls_[key].digest = digest;
    auto e = entries_.find(digest);
    if (e != entries_.end()) {  // another tag of the same image is cached
      RememberRefLocked(e->second, ref);
      return absl::OkStatus();
    }
  }
  absl::Status s =
      SingleFlight(absl::StrCat("digest ", digest), [&] { return PullDigest(ref, digest); });
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto e = entries_.find(digest);
  if (e != entries_.end()) RememberRefLocked(e->second, ref);
  return absl::OkStatus();
}

absl::Status ImageCache::PullDigest(const ImageRef& ref, const std::string& digest) {
  {
    absl::MutexLock lock(&mu_);
    if (entries_.count(digest) > 0) return absl::OkStatus();
  }
  const std::string tmp =
      absl::StrCat(options_.dir, "/tmp/", HexOf(digest).substr(0, 16), "-", RandomHex(6));
  if (absl::Status s = MakeDirs(tmp, 0700); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    digest_pulls_[digest] = DigestPull{ref, tmp, -1};
  }
  absl::Cleanup forget = [&] {
    absl::MutexLock lock(&mu_);
    digest_pulls_.erase(digest);
  };
  const absl::Time start = absl::Now();
  auto config = fetcher_.Fetch(ref, digest, tmp);
  if (!config.ok()) {
    (void)RemoveTree(tmp);
    return config.status();
  }
  const int64_t size = DiskUsage(tmp);
  const std::string final_dir = EntryDir(digest);
  (void)RemoveTree(final_dir);  // a leftover without metadata (Load() clears those anyway)
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    absl::Status s =
        absl::InternalError(absl::StrCat("cannot move the pulled image into place: ", final_dir));
    (void)RemoveTree(tmp);
    return s;
  }
  std::vector<std::string> trash;
  {
    absl::MutexLock lock(&mu_);
    Entry entry;
    entry.digest = digest;
    entry.size_bytes = size;
    entry.last_used = absl::Now();
    entry.config = std::move(*config);
    Entry& stored = entries_[digest] = std::move(entry);
    total_bytes_ += size;
    ++stats_.pulls;
    RememberRefLocked(stored, ref);
    if (absl::Status s = PersistLocked(stored, /*sync=*/true); !s.ok()) {
      LogWarn("cannot write image metadata; the image will be pulled again after a restart",
              {{"digest", digest}, {"error", s.ToString()}});
    }
    trash = EvictLocked(digest);
  }
  EmptyTrash(trash);
  LogInfo("image pulled", {{"image", ref.ToString()},
                           {"digest", digest},
                           {"bytes", std::to_string(size)},
                           {"ms", std::to_string(absl::ToInt64Milliseconds(absl::Now() - start))}});
  return absl::OkStatus();
}

std::vector<std::string> ImageCache::EvictLocked(const std::string& keep) {
  std::vector<std::string> trash;
  while (total_bytes_ > options_.budget_bytes) {
    Entry* victim = nullptr;
    for (auto& [digest, entry] : entries_) {
      if (!entry.holders.empty() || digest == keep) continue;
      if (victim == nullptr || entry.last_used < victim->last_used) victim = &entry;
    }
    if (victim == nullptr) break;  // everything left is in use
    const std::string digest = victim->digest;
    const std::string to = absl::StrCat(options_.dir, "/trash/", HexOf(digest), "-", RandomHex(4));
    if (::rename(EntryDir(digest).c_str(), to.c_str()) != 0) {
      LogWarn("cannot evict image", {{"digest", digest}});
      break;
    }
    trash.push_back(to);
    LogInfo("image evicted", {{"digest", digest}, {"bytes", std::to_string(victim->size_bytes)}});
    total_bytes_ -= victim->size_bytes;
    for (const auto& t : victim->tags) {
      auto it = tags_.find(t);
      if (it != tags_.end() && it->second == digest) tags_.erase(it);
    }
    entries_.erase(digest);
    ++stats_.evictions;
  }
  return trash;
}

void ImageCache::EmptyTrash(const std::vector<std::string>& dirs) {
  for (const auto& d : dirs) {
    if (absl::Status s = RemoveTree(d); !s.ok()) {
      LogWarn("cannot delete evicted image", {{"dir", d}, {"error", s.ToString()}});
    }
  }
}

absl::Status ImageCache::SingleFlight(const std::string& key,
                                      const std::function<absl::Status()>& fn) {
  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    absl::MutexLock lock(&flights_mu_);
    auto& slot = flights_[key];
    if (slot == nullptr) {
      slot = std::make_shared<Flight>();
      leader = true;
    }
    flight = slot;
  }
  if (!leader) {
    flight->done.WaitForNotification();
    return flight->status;
  }
  flight->status = fn();
  {
    absl::MutexLock lock(&flights_mu_);
    flights_.erase(key);
  }
  flight->done.Notify();
  return flight->status;
}

absl::StatusOr<CachedImageInfo> ImageCache::Prefetch(const std::string& image) {
  const std::string holder = absl::StrCat("prefetch:", RandomHex(8));
  auto lease = Acquire(image, holder);
  if (!lease.ok()) return lease.status();
  std::vector<CachedImageInfo> images = Images();
  Release(lease->digest, holder);
  for (auto& info : images) {
    if (info.digest == lease->digest) {
      --info.sandboxes;  // not counting our own short hold
      return info;
    }
  }
  return absl::InternalError("a prefetched image vanished from the cache");
}

std::vector<CachedImageInfo> ImageCache::Images() {
  absl::MutexLock lock(&mu_);
  std::vector<CachedImageInfo> out;
  for (const auto& [digest, entry] : entries_) {
    CachedImageInfo info;
    info.digest = digest;
    info.size_bytes = entry.size_bytes;
    info.sandboxes = static_cast<int>(entry.holders.size());
    info.last_used = entry.last_used;
    // References as users write them: the full ones, and the short ones for the default
    // registry (the scheduler matches a sandbox's image string against these).
    std::set<std::string> refs;
    const std::string prefix = absl::StrCat(options_.default_registry, "/");
    auto add = [&](const std::string& full) {
      refs.insert(full);
      if (!options_.default_registry.empty() && full.rfind(prefix, 0) == 0) {
        refs.insert(full.substr(prefix.size()));
      }
    };
    for (const auto& t : entry.tags) add(t);
    for (const auto& n : entry.names) add(absl::StrCat(n, "@", digest));
    info.refs.assign(refs.begin(), refs.end());
    out.push_back(std::move(info));
  }
  return out;
}

int64_t ImageCache::total_bytes() {
  absl::MutexLock lock(&mu_);
  return total_bytes_;
}

ImageCacheStats ImageCache::stats() {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace isorun::runner

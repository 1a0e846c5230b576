#include "services/gateway/admin.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "services/kit/api_key.h"
#include "services/kit/log.h"
#include "services/gateway/strings.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

constexpr char kFindToken[] = "gateway_find_operator_token";
constexpr char kAddCounters[] = "gateway_usage_add_counters";
constexpr char kMaxGauges[] = "gateway_usage_max_gauges";
constexpr char kQueryUsage[] = "gateway_usage_query";
constexpr char kRollUp[] = "gateway_usage_roll_up";
constexpr char kDeleteMinutes[] = "gateway_usage_delete_minutes";
constexpr char kDeleteHours[] = "gateway_usage_delete_hours";

absl::Status Unauthenticated(std::string_view reason, std::string_view message) {
  return Error(absl::StatusCode::kUnauthenticated, reason, message);
}

std::string Iso(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
}

// Gauges are the metrics named *_max.
constexpr char kValueOfBucket[] =
    "CASE WHEN metric LIKE '%\\_max' THEN max(value) ELSE sum(value) END";

}  // namespace

PgOperatorTokens::PgOperatorTokens(PgPool& pool) : pool_(pool) {
  pool_.Prepare(kFindToken,
                "SELECT secret_hash, revoked_at IS NOT NULL FROM accounts.operator_tokens "
                "WHERE token_id = $1");
}

absl::StatusOr<std::string> PgOperatorTokens::Verify(
    std::optional<std::string_view> authorization) {
  if (!authorization) {
    return Unauthenticated("OPERATOR_TOKEN_MISSING",
                           "this route needs an operator token: `Authorization: Bearer isro_...`");
  }
  absl::string_view header =
      absl::StripAsciiWhitespace(absl::string_view(authorization->data(), authorization->size()));
  if (!absl::StartsWithIgnoreCase(header, "bearer ")) {
    return Unauthenticated("OPERATOR_TOKEN_MALFORMED",
                           "the Authorization header must be `Bearer <operator token>`");
  }
  absl::string_view token = absl::StripLeadingAsciiWhitespace(header.substr(7));
  auto parsed = ParseOperatorToken(std::string_view(token.data(), token.size()));
  if (!parsed) {
    return Unauthenticated("OPERATOR_TOKEN_MALFORMED",
                           "not an operator token: expected isro_<tokenId>_<secret> (API keys "
                           "cannot call operator routes)");
  }
  std::optional<std::pair<std::string, bool>> stored;
  absl::Status st = pool_.Transact([&](pqxx::work& tx) {
    stored.reset();
    pqxx::result r = tx.exec_prepared(kFindToken, parsed->token_id);
    if (!r.empty()) stored.emplace(r[0][0].as<std::string>(), r[0][1].as<bool>());
    return absl::OkStatus();
  });
  if (!st.ok()) return absl::UnavailableError(Cat("cannot check the operator token: ", st.message()));
  if (!stored || !SecretMatches(parsed->secret, stored->first) || stored->second) {
    return Unauthenticated("OPERATOR_TOKEN_INVALID", "the operator token is not valid");
  }
  return parsed->token_id;
}

SchedulerAdminClient::SchedulerAdminClient(std::string url, absl::Duration deadline)
    : deadline_(deadline) {
  for (absl::string_view rest : absl::StrSplit(url, ',', absl::SkipWhitespace())) {
    rest = absl::StripAsciiWhitespace(rest);
    if (!absl::StartsWith(rest, "http://")) continue;
    rest.remove_prefix(7);
    rest = rest.substr(0, rest.find('/'));
    size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos) continue;
    upstreams_.emplace_back(std::string(rest.substr(0, colon)), std::string(rest.substr(colon + 1)));
  }
}

absl::StatusOr<UpstreamResponse> SchedulerAdminClient::Call(const std::string& method,
                                                            const std::string& target) {
  if (upstreams_.empty()) {
    return absl::UnavailableError("this gateway has no --scheduler_admin_url");
  }
  absl::StatusOr<UpstreamResponse> out;
  for (const auto& [host, port] : upstreams_) {
    out = CallOne(host, port, method, target);
    // A follower (503) or a replica that is down: the next one may be the leader.
    if (out.ok() && out->status != 503) return out;
  }
  return out;
}

absl::StatusOr<UpstreamResponse> SchedulerAdminClient::CallOne(const std::string& host,
                                                               const std::string& port,
                                                               const std::string& method,
                                                               const std::string& target) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  using tcp = boost::asio::ip::tcp;
  boost::asio::io_context ioc;
  tcp::resolver::results_type endpoints;
  try {
    endpoints = tcp::resolver(ioc).resolve(host, port);
  } catch (const std::exception& e) {
    return absl::UnavailableError(Cat("the scheduler's admin listener did not answer: ", e.what()));
  }
  // A name with several addresses (a headless Service of scheduler replicas): each in turn
  // until one that is not a follower (503) answers.
  absl::StatusOr<UpstreamResponse> out = absl::UnavailableError("no address");
  for (const auto& endpoint : endpoints) {
    out = CallEndpoint(ioc, endpoint.endpoint(), host, port, method, target);
    if (out.ok() && out->status != 503) return out;
  }
  return out;
}

absl::StatusOr<UpstreamResponse> SchedulerAdminClient::CallEndpoint(
    boost::asio::io_context& ioc, const boost::asio::ip::tcp::endpoint& endpoint,
    const std::string& host, const std::string& port, const std::string& method,
    const std::string& target) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  using tcp = boost::asio::ip::tcp;
  try {
    beast::tcp_stream stream(ioc);
    stream.expires_after(absl::ToChronoMilliseconds(deadline_));
    stream.connect(endpoint);
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, host + ":" + port);
    req.set(http::field::connection, "close");
    if (method == "POST") req.prepare_payload();
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    http::read(stream, buffer, parser);
    auto res = parser.release();
    UpstreamResponse out;
    out.status = static_cast<int>(res.result_int());
    out.content_type = std::string(res[http::field::content_type]);
    out.body = std::move(res.body());
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    return out;
  } catch (const std::exception& e) {
    return absl::UnavailableError(Cat("the scheduler's admin listener did not answer: ", e.what()));
  }
}

TenantUsageRecorder::TenantUsageRecorder(PgPool& pool, UsageFn usage, Options options)
    : pool_(pool), usage_(std::move(usage)), options_(options) {
  const std::string insert =
      "INSERT INTO accounts.tenant_usage_history (tenant_id, step_sec, bucket, metric, value) "
      "SELECT t::uuid, 60, to_timestamp(m * 60), metric, v FROM unnest($1::text[], "
      "$2::text[]::bigint[], $3::text[], $4::text[]::bigint[]) AS u(t, m, metric, v) "
      "ON CONFLICT (tenant_id, step_sec, bucket, metric) DO UPDATE SET value = ";
  pool_.Prepare(kAddCounters, insert + "tenant_usage_history.value + EXCLUDED.value");
  pool_.Prepare(kMaxGauges, insert + "GREATEST(tenant_usage_history.value, EXCLUDED.value)");
  pool_.Prepare(kQueryUsage,
                Cat("SELECT extract(epoch FROM date_bin(make_interval(secs => $4::float8), "
                    "bucket, $2::timestamptz))::bigint AS b, metric, ",
                    kValueOfBucket,
                    " FROM accounts.tenant_usage_history WHERE tenant_id = $1::uuid AND "
                    "step_sec IN (60, 3600) AND bucket >= $2::timestamptz AND "
                    "bucket < $3::timestamptz GROUP BY b, metric ORDER BY b, metric"));
  pool_.Prepare(kRollUp,
                Cat("INSERT INTO accounts.tenant_usage_history "
                    "(tenant_id, step_sec, bucket, metric, value) "
                    "SELECT tenant_id, 3600, date_bin('1 hour', bucket, TIMESTAMPTZ 'epoch') AS b, "
                    "metric, ",
                    kValueOfBucket,
                    " FROM accounts.tenant_usage_history WHERE step_sec = 60 AND "
                    "bucket < $1::timestamptz GROUP BY tenant_id, b, metric "
                    "ON CONFLICT (tenant_id, step_sec, bucket, metric) DO UPDATE SET value = "
                    "CASE WHEN EXCLUDED.metric LIKE '%\\_max' THEN "
                    "GREATEST(tenant_usage_history.value, EXCLUDED.value) "
                    "ELSE tenant_usage_history.value + EXCLUDED.value END"));
  pool_.Prepare(kDeleteMinutes,
                "DELETE FROM accounts.tenant_usage_history WHERE step_sec = 60 AND "
                "bucket < $1::timestamptz");
  pool_.Prepare(kDeleteHours,
                "DELETE FROM accounts.tenant_usage_history WHERE step_sec = 3600 AND "
                "bucket < $1::timestamptz");
}

TenantUsageRecorder::~TenantUsageRecorder() { Stop(); }

void TenantUsageRecorder::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] {
    absl::Time last_sample = absl::Now();
    absl::Time last_compact = absl::InfinitePast();
    while (!stop_.WaitForNotificationWithTimeout(options_.flush_interval)) {
      const absl::Time now = absl::Now();
      if (now - last_sample >= options_.sample_interval) {
        last_sample = now;
        SampleNow();
      }
      if (absl::Status st = Flush(); !st.ok()) {
        LogWarn("cannot record tenant usage; will retry", {{"error", std::string(st.message())}});
      }
      if (now - last_compact >= absl::Minutes(10)) {
        last_compact = now;
        if (absl::Status st = Compact(now); !st.ok()) {
          LogWarn("cannot compact tenant usage history", {{"error", std::string(st.message())}});
        }
      }
    }
  });
}

void TenantUsageRecorder::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
  (void)Flush();
}

void TenantUsageRecorder::Add(const std::string& tenant, const std::string& metric,
                              int64_t value, bool gauge) {
  Key key{tenant, absl::ToUnixSeconds(absl::Now()) / 60, metric};
  absl::MutexLock lock(&mu_);
  if (gauge) {
    int64_t& v = gauges_[key];
    v = std::max(v, value);
  } else {
    counters_[key] += value;
  }
}

void TenantUsageRecorder::RecordCreate(const std::string& tenant) {
  Add(tenant, "creates", 1, false);
}

void TenantUsageRecorder::RecordRefusal(const std::string& tenant, const std::string& reason) {
  Add(tenant, "refused:" + reason, 1, false);
}

void TenantUsageRecorder::Seen(const std::string& tenant) {
  absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  seen_[tenant] = now;
}

void TenantUsageRecorder::SampleNow() {
  std::vector<std::string> tenants;
  {
    const absl::Time since = absl::Now() - options_.sample_tenants_seen_within;
    absl::MutexLock lock(&mu_);
    for (auto it = seen_.begin(); it != seen_.end();) {
      if (it->second < since) {
        seen_.erase(it++);
      } else {
        tenants.push_back(it->first);
        ++it;
      }
    }
  }
  for (const std::string& tenant : tenants) {
    auto usage = usage_(tenant);
    if (!usage.ok()) continue;
    Add(tenant, "active_max", usage->first, true);
    Add(tenant, "hibernated_max", usage->second, true);
  }
}

absl::Status TenantUsageRecorder::Flush() {
  absl::flat_hash_map<Key, int64_t> counters, gauges;
  {
    absl::MutexLock lock(&mu_);
    counters.swap(counters_);
    gauges.swap(gauges_);
  }
  auto write = [&](const char* statement, const absl::flat_hash_map<Key, int64_t>& rows) {
    if (rows.empty()) return absl::OkStatus();
    std::vector<std::string> tenants, minutes, metrics, values;
    for (const auto& [k, v] : rows) {
      tenants.push_back(k.tenant);
      minutes.push_back(std::to_string(k.minute));
      metrics.push_back(k.metric);
      values.push_back(std::to_string(v));
    }
    return pool_.Execute([&](pqxx::nontransaction& tx) {
      tx.exec_prepared(statement, PgTextArray(tenants), PgTextArray(minutes),
                       PgTextArray(metrics), PgTextArray(values));
      return absl::OkStatus();
    });
  };
  absl::Status st = write(kAddCounters, counters);
  if (st.ok()) st = write(kMaxGauges, gauges);
  if (!st.ok()) {
    // Kept for the next try (adding to what came in meanwhile).
    absl::MutexLock lock(&mu_);
    for (const auto& [k, v] : counters) counters_[k] += v;
    for (const auto& [k, v] : gauges) gauges_[k] = std::max(gauges_[k], v);
  }
  return st;
}

absl::StatusOr<std::vector<TenantUsageRecorder::Point>> TenantUsageRecorder::Query(
    const std::string& tenant, absl::Time from, absl::Time to, absl::Duration step) {
  // This gateway's unwritten counts first, so a dashboard sees its own latest requests.
  if (absl::Status st = Flush(); !st.ok()) return st;
  std::vector<Point> out;
  absl::Status st = pool_.Transact([&](pqxx::work& tx) {
    out.clear();
    pqxx::result r = tx.exec_prepared(kQueryUsage, tenant, Iso(from), Iso(to),
                                      absl::ToDoubleSeconds(step));
    for (const auto& row : r) {
      absl::Time at = absl::FromUnixSeconds(row[0].as<int64_t>());
      if (out.empty() || out.back().at != at) out.push_back(Point{at, {}});
      out.back().values[row[1].as<std::string>()] = row[2].as<int64_t>();
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return out;
}

absl::Status TenantUsageRecorder::Compact(absl::Time now) {
  const int64_t cut = absl::ToUnixSeconds(now - options_.minute_retention) / 3600 * 3600;
  const std::string cut_text = Iso(absl::FromUnixSeconds(cut));
  return pool_.Transact([&](pqxx::work& tx) {
    tx.exec_prepared(kRollUp, cut_text);
    tx.exec_prepared(kDeleteMinutes, cut_text);
    tx.exec_prepared(kDeleteHours, Iso(now - options_.hour_retention));
    return absl::OkStatus();
  });
}

}  // namespace isorun::gateway

#include "services/gateway/bodies.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "services/gateway/json_value.h"
#include "services/gateway/strings.h"
#include "services/kit/json.h"
#include "services/kit/status.h"

namespace isorun::gateway {
namespace {

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;

absl::Status Invalid(std::string_view message) {
  return Error(absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT", message);
}

// A value for messages: numbers and keys echoed back, shortened.
std::string Shorten(std::string_view s) {
  constexpr size_t kMax = 40;
  if (s.size() <= kMax) return std::string(s);
  return Cat(s.substr(0, kMax), "...");
}

std::string Join(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : Cat(path, ".", key);
}

absl::Status WrongType(std::string_view path, std::string_view expected, const JsonValue& got) {
  return Invalid(Cat("field \"", path, "\" must be ", expected, ", not ", KindName(got.kind())));
}

absl::Status UnknownField(std::string_view path) {
  return Invalid(Cat("unknown field \"", Shorten(path), "\""));
}

absl::Status CheckNoNul(std::string_view path, std::string_view s) {
  if (s.find('\0') != std::string_view::npos) {
    return Invalid(Cat("field \"", Shorten(path), "\" must not contain NUL characters"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadString(std::string_view path, const JsonValue& v) {
  if (v.kind() != JsonValue::Kind::kString) return WrongType(path, "a string", v);
  if (absl::Status st = CheckNoNul(path, v.string_value()); !st.ok()) return st;
  return v.string_value();
}

// A positive integer that fits int32. Integral values written as decimals (30.0, 3e1) are
// accepted, since many JSON encoders print numbers that way.
absl::StatusOr<int32_t> ReadPositiveInt32(std::string_view path, const JsonValue& v) {
  if (v.kind() != JsonValue::Kind::kNumber) return WrongType(path, "an integer", v);
  const std::string& lex = v.number_lexeme();
  auto bad = [&](std::string_view why) {
    return Invalid(Cat("field \"", path, "\" must be ", why, ", got ", Shorten(lex)));
  };
  int64_t value = 0;
  if (lex.find_first_of(".eE") == std::string::npos) {
    auto [ptr, ec] = std::from_chars(lex.data(), lex.data() + lex.size(), value);
    if (ec == std::errc::result_out_of_range) {
      return bad(lex[0] == '-' ? "a positive integer" : "at most 2147483647");
    }
    if (ec != std::errc() || ptr != lex.data() + lex.size()) return bad("an integer");
  } else {
    double d = std::strtod(lex.c_str(), nullptr);
    if (!std::isfinite(d)) return bad("at most 2147483647");
    if (std::trunc(d) != d) return bad("an integer");
    if (d < -1e18 || d > 1e18) return bad(d < 0 ? "a positive integer" : "at most 2147483647");
    value = static_cast<int64_t>(d);
  }
  if (value <= 0) return bad("a positive integer");
  if (value > std::numeric_limits<int32_t>::max()) return bad("at most 2147483647");
  return static_cast<int32_t>(value);
}

absl::Status ReadStringMap(std::string_view path, const JsonValue& v,
                           google::protobuf::Map<std::string, std::string>* out) {
  if (v.is_null()) return absl::OkStatus();
  if (v.kind() != JsonValue::Kind::kObject) {
    return WrongType(path, "an object of strings", v);
  }
  for (const auto& [key, value] : v.members()) {
    std::string sub = Cat(path, ".", Shorten(key));
    if (absl::Status st = CheckNoNul(sub, key); !st.ok()) return st;
    auto s = ReadString(sub, value);
    if (!s.ok()) return s.status();
    (*out)[key] = *std::move(s);
  }
  return absl::OkStatus();
}

absl::Status ReadNetwork(std::string_view path, const JsonValue& v, v1::NetworkPolicy* out) {
  if (v.is_null()) return absl::OkStatus();
  if (v.kind() != JsonValue::Kind::kObject) return WrongType(path, "an object", v);
  for (const auto& [key, value] : v.members()) {
    std::string sub = Join(path, key);
    if (key == "egress") {
      if (value.is_null()) continue;
      auto s = ReadString(sub, value);
      if (!s.ok()) return s.status();
      out->set_egress(*std::move(s));
    } else if (key == "allow") {
      if (value.is_null()) continue;
      if (value.kind() != JsonValue::Kind::kArray) {
        return WrongType(sub, "an array of strings", value);
      }
      for (size_t i = 0; i < value.items().size(); ++i) {
        auto s = ReadString(Cat(sub, "[", i, "]"), value.items()[i]);
        if (!s.ok()) return s.status();
        out->add_allow(*std::move(s));
      }
    } else {
      return UnknownField(sub);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<JsonValue> ParseObjectBody(std::string_view body) {
  auto doc = ParseJson(body);
  if (!doc.ok()) return Invalid(Sv(doc.status().message()));
  if (doc->kind() != JsonValue::Kind::kObject) {
    return Invalid(Cat("the body must be a JSON object, not ", KindName(doc->kind())));
  }
  return doc;
}

// Reads an optional string field into `set`.
template <typename Setter>
absl::Status OptionalString(std::string_view key, const JsonValue& value, Setter set) {
  if (value.is_null()) return absl::OkStatus();
  auto s = ReadString(key, value);
  if (!s.ok()) return s.status();
  set(*std::move(s));
  return absl::OkStatus();
}

template <typename Setter>
absl::Status OptionalPositiveInt(std::string_view key, const JsonValue& value, Setter set) {
  if (value.is_null()) return absl::OkStatus();
  auto n = ReadPositiveInt32(key, value);
  if (!n.ok()) return n.status();
  set(*n);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::CreateSandboxRequest> ParseCreateBody(std::string_view body) {
  auto doc = ParseObjectBody(body);
  if (!doc.ok()) return doc.status();
  v1::CreateSandboxRequest req;
  for (const auto& [key, value] : doc->members()) {
    absl::Status st;
    if (key == "image") {
      st = OptionalString(key, value, [&](std::string s) { req.set_image(std::move(s)); });
    } else if (key == "timeoutSec") {
      st = OptionalPositiveInt(key, value, [&](int32_t n) { req.set_timeout_sec(n); });
    } else if (key == "cpuMillis") {
      st = OptionalPositiveInt(key, value, [&](int32_t n) { req.set_cpu_millis(n); });
    } else if (key == "memoryMb") {
      st = OptionalPositiveInt(key, value, [&](int32_t n) { req.set_memory_mb(n); });
    } else if (key == "diskMb") {
      st = OptionalPositiveInt(key, value, [&](int32_t n) { req.set_disk_mb(n); });
    } else if (key == "env") {
      st = ReadStringMap(key, value, req.mutable_env());
    } else if (key == "metadata") {
      st = ReadStringMap(key, value, req.mutable_metadata());
    } else if (key == "network") {
      st = ReadNetwork(key, value, req.mutable_network());
    } else {
      st = UnknownField(key);
    }
    if (!st.ok()) return st;
  }
  return req;
}

absl::StatusOr<v1::ExecRequest> ParseExecBody(std::string_view body) {
  auto doc = ParseObjectBody(body);
  if (!doc.ok()) return doc.status();
  v1::ExecRequest req;
  for (const auto& [key, value] : doc->members()) {
    absl::Status st;
    if (key == "cmd") {
      st = OptionalString(key, value, [&](std::string s) { req.set_cmd(std::move(s)); });
    } else if (key == "timeoutSec") {
      st = OptionalPositiveInt(key, value, [&](int32_t n) { req.set_timeout_sec(n); });
    } else if (key == "env") {
      st = ReadStringMap(key, value, req.mutable_env());
    } else if (key == "cwd") {
      st = OptionalString(key, value, [&](std::string s) { req.set_cwd(std::move(s)); });
    } else if (key == "stdin") {
      // stdin is text: NUL is allowed here, it is passed as bytes.
      if (!value.is_null()) {
        if (value.kind() != JsonValue::Kind::kString) {
          st = WrongType(key, "a string", value);
        } else {
          req.set_stdin(value.string_value());
        }
      }
    } else {
      st = UnknownField(key);
    }
    if (!st.ok()) return st;
  }
  return req;
}

absl::StatusOr<int32_t> ParseSetTimeoutBody(std::string_view body) {
  auto doc = ParseObjectBody(body);
  if (!doc.ok()) return doc.status();
  int32_t timeout = 0;
  for (const auto& [key, value] : doc->members()) {
    if (key != "timeoutSec") return UnknownField(key);
    if (value.is_null()) continue;
    auto n = ReadPositiveInt32(key, value);
    if (!n.ok()) return n.status();
    timeout = *n;
  }
  if (timeout == 0) return Invalid("field \"timeoutSec\" is required");
  return timeout;
}

absl::StatusOr<CreateKeyBody> ParseCreateKeyBody(std::string_view body) {
  auto doc = ParseObjectBody(body);
  if (!doc.ok()) return doc.status();
  CreateKeyBody out;
  bool has_name = false;
  for (const auto& [key, value] : doc->members()) {
    if (key == "name") {
      auto name = ReadString(key, value);
      if (!name.ok()) return name.status();
      if (name->empty() || name->size() > 128) {
        return Invalid("field \"name\" must be 1 to 128 bytes long");
      }
      for (unsigned char c : *name) {
        if (c < 0x20 || c == 0x7f) return Invalid("field \"name\" must not contain control characters");
      }
      out.name = *std::move(name);
      has_name = true;
    } else if (key == "role") {
      if (value.is_null()) continue;
      auto role = ReadString(key, value);
      if (!role.ok()) return role.status();
      if (*role != "admin" && *role != "sandbox") {
        return Invalid(Cat("field \"role\" must be \"admin\" or \"sandbox\", got \"", Shorten(*role),
                           "\""));
      }
      out.role = *std::move(role);
    } else {
      return UnknownField(key);
    }
  }
  if (!has_name) return Invalid("field \"name\" is required");
  return out;
}

absl::StatusOr<v1::NetworkPolicy> ParseNetworkBody(std::string_view body) {
  auto doc = ParseObjectBody(body);
  if (!doc.ok()) return doc.status();
  v1::NetworkPolicy out;
  if (absl::Status s = ReadNetwork("", *doc, &out); !s.ok()) return s;
  if (out.egress().empty()) return Invalid("field \"egress\" is required");
  return out;
}

absl::Status ParseEmptyBody(std::string_view body) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return absl::OkStatus();
  auto doc = ParseObjectBody(body);
  if (!doc.ok()) return doc.status();
  if (!doc->members().empty()) return UnknownField(doc->members().front().first);
  return absl::OkStatus();
}

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::StatusOr<std::string> PercentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '+') {
      out.push_back(' ');
    } else if (c == '%') {
      int hi = i + 2 < s.size() ? HexValue(s[i + 1]) : -1;
      int lo = i + 2 < s.size() ? HexValue(s[i + 2]) : -1;
      if (hi < 0 || lo < 0) return Invalid("malformed percent-escape in the query string");
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(c);
    }
  }
  // SanitizeUtf8 changes exactly the strings that are not valid UTF-8.
  if (SanitizeUtf8(out) != out) return Invalid("the query string is not valid UTF-8");
  if (out.find('\0') != std::string::npos) return Invalid("the query string contains NUL");
  return out;
}

absl::StatusOr<v1::SandboxState> ParseState(std::string_view word) {
  std::string upper = absl::AsciiStrToUpper(absl::string_view(word.data(), word.size()));
  v1::SandboxState state;
  if (upper.empty() || upper == "SANDBOX_STATE_UNSPECIFIED" ||
      !v1::SandboxState_Parse(upper, &state)) {
    return Invalid(Cat("unknown state \"", Shorten(word),
                       "\"; expected PENDING, STARTING, RUNNING, HIBERNATED, "
                       "DESTROYING, DESTROYED, FAILED or LOST"));
  }
  return state;
}

}  // namespace

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseQueryString(
    std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  for (absl::string_view part :
       absl::StrSplit(absl::string_view(query.data(), query.size()), '&')) {
    if (part.empty()) continue;
    size_t eq = part.find('=');
    absl::string_view raw_name = part.substr(0, eq);
    absl::string_view raw_value = eq == absl::string_view::npos ? "" : part.substr(eq + 1);
    auto name = PercentDecode(std::string_view(raw_name.data(), raw_name.size()));
    if (!name.ok()) return name.status();
    auto value = PercentDecode(std::string_view(raw_value.data(), raw_value.size()));
    if (!value.ok()) return value.status();
    out.emplace_back(*std::move(name), *std::move(value));
  }
  return out;
}

absl::StatusOr<v1::ListSandboxesRequest> ParseListQuery(std::string_view query) {
  auto params = ParseQueryString(query);
  if (!params.ok()) return params.status();
  v1::ListSandboxesRequest req;
  req.set_page_size(kDefaultPageSize);
  absl::flat_hash_set<int> states;
  bool page_size_seen = false;
  bool page_token_seen = false;
  constexpr std::string_view kMetadataPrefix = "metadata.";
  for (const auto& [name, value] : *params) {
    if (name == "state") {
      for (absl::string_view word : absl::StrSplit(value, ',')) {
        word = absl::StripAsciiWhitespace(word);
        if (word.empty()) continue;
        auto state = ParseState(std::string_view(word.data(), word.size()));
        if (!state.ok()) return state.status();
        if (states.insert(*state).second) req.add_states(*state);
      }
    } else if (name.rfind(kMetadataPrefix, 0) == 0) {
      std::string key = name.substr(kMetadataPrefix.size());
      if (key.empty())
        return Invalid("query parameter \"metadata.\" needs a key: metadata.KEY=VALUE");
      if (!req.mutable_metadata()->insert({key, value}).second) {
        return Invalid(Cat("query parameter \"", Shorten(name), "\" is given twice"));
      }
    } else if (name == "pageSize") {
      if (page_size_seen) return Invalid("query parameter \"pageSize\" is given twice");
      page_size_seen = true;
      if (value.empty()) continue;
      int size = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), size);
      if (ec != std::errc() || ptr != value.data() + value.size() || size < 1 ||
          size > kMaxPageSize) {
        return Invalid(Cat("query parameter \"pageSize\" must be an integer from 1 to ",
                           kMaxPageSize, ", got \"", Shorten(value), "\""));
      }
      req.set_page_size(size);
    } else if (name == "pageToken") {
      if (page_token_seen) return Invalid("query parameter \"pageToken\" is given twice");
      page_token_seen = true;
      req.set_page_token(value);
    } else {
      return Invalid(Cat("unknown query parameter \"", Shorten(name),
                         "\"; expected state, metadata.KEY, pageSize or pageToken"));
    }
  }
  return req;
}

absl::StatusOr<v1::ListSandboxEventsRequest> ParseEventsQuery(std::string_view query) {
  auto params = ParseQueryString(query);
  if (!params.ok()) return params.status();
  for (const auto& [name, value] : *params) {
    if (name != "pageSize" && name != "pageToken") {
      return Invalid(Cat("unknown query parameter \"", Shorten(name),
                         "\"; expected pageSize or pageToken"));
    }
  }
  // The same rules as the sandbox list's paging (one parser, so the messages agree).
  auto list = ParseListQuery(query);
  if (!list.ok()) return list.status();
  v1::ListSandboxEventsRequest req;
  req.set_page_size(list->page_size());
  req.set_page_token(list->page_token());
  return req;
}

bool IsJsonContentType(std::string_view content_type) {
  std::string type = absl::AsciiStrToLower(
      absl::StripAsciiWhitespace(absl::string_view(content_type.data(), content_type.size())));
  if (size_t semi = type.find(';'); semi != std::string::npos) {
    type = std::string(absl::StripAsciiWhitespace(absl::string_view(type).substr(0, semi)));
  }
  if (type == "application/json") return true;
  return type.rfind("application/", 0) == 0 && type.size() > 17 &&
         type.compare(type.size() - 5, 5, "+json") == 0;
}

bool IsValidIdempotencyKey(std::string_view key) {
  if (key.empty() || key.size() > 255) return false;
  for (char c : key) {
    if (c < 0x20 || c > 0x7E) return false;
  }
  return true;
}

}  // namespace isorun::gateway

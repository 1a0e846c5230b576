#include "services/gateway/json_value.h"

#include <cstdint>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "services/gateway/strings.h"
#include "services/kit/json.h"

namespace isorun::gateway {

JsonValue JsonValue::Bool(bool b) {
  JsonValue v;
  v.kind_ = Kind::kBool;
  v.bool_ = b;
  return v;
}

JsonValue JsonValue::Number(std::string lexeme) {
  JsonValue v;
  v.kind_ = Kind::kNumber;
  v.text_ = std::move(lexeme);
  return v;
}

JsonValue JsonValue::String(std::string s) {
  JsonValue v;
  v.kind_ = Kind::kString;
  v.text_ = std::move(s);
  return v;
}

JsonValue JsonValue::Array(std::vector<JsonValue> items) {
  JsonValue v;
  v.kind_ = Kind::kArray;
  v.items_ = std::move(items);
  return v;
}

JsonValue JsonValue::Object(std::vector<std::pair<std::string, JsonValue>> members) {
  JsonValue v;
  v.kind_ = Kind::kObject;
  v.members_ = std::move(members);
  return v;
}

std::string_view KindName(JsonValue::Kind kind) {
  switch (kind) {
    case JsonValue::Kind::kNull:
      return "null";
    case JsonValue::Kind::kBool:
      return "boolean";
    case JsonValue::Kind::kNumber:
      return "number";
    case JsonValue::Kind::kString:
      return "string";
    case JsonValue::Kind::kArray:
      return "array";
    case JsonValue::Kind::kObject:
      return "object";
  }
  return "value";
}

namespace {

class Parser {
 public:
  Parser(std::string_view text, int max_depth) : s_(text), max_depth_(max_depth) {}

  absl::StatusOr<JsonValue> ParseDocument() {
    SkipWhitespace();
    if (AtEnd()) return Fail("the body is empty; expected a JSON value");
    JsonValue value;
    if (absl::Status st = ParseValue(value, 0); !st.ok()) return st;
    SkipWhitespace();
    if (!AtEnd()) return Fail("unexpected data after the JSON value");
    return value;
  }

 private:
  bool AtEnd() const { return pos_ >= s_.size(); }
  unsigned char Peek() const { return static_cast<unsigned char>(s_[pos_]); }

  absl::Status Fail(std::string_view what) const {
    return absl::InvalidArgumentError(Cat("malformed JSON at byte ", pos_, ": ", what));
  }

  void SkipWhitespace() {
    while (!AtEnd()) {
      char c = s_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return;
      ++pos_;
    }
  }

  absl::Status ParseValue(JsonValue& out, int depth) {
    if (AtEnd()) return Fail("unexpected end of input; expected a value");
    switch (s_[pos_]) {
      case '{':
        return ParseObject(out, depth + 1);
      case '[':
        return ParseArray(out, depth + 1);
      case '"': {
        std::string str;
        if (absl::Status st = ParseString(str); !st.ok()) return st;
        out = JsonValue::String(std::move(str));
        return absl::OkStatus();
      }
      case 't':
        return ParseLiteral("true", JsonValue::Bool(true), out);
      case 'f':
        return ParseLiteral("false", JsonValue::Bool(false), out);
      case 'n':
        return ParseLiteral("null", JsonValue::Null(), out);
      default:
        if (s_[pos_] == '-' || (s_[pos_] >= '0' && s_[pos_] <= '9')) return ParseNumber(out);
        return Fail("unexpected character; expected a value");
    }
  }

  absl::Status ParseLiteral(std::string_view word, JsonValue value, JsonValue& out) {
    if (s_.substr(pos_, word.size()) != word) return Fail("unexpected character; expected a value");
    pos_ += word.size();
    out = std::move(value);
    return absl::OkStatus();
  }

  absl::Status ParseNumber(JsonValue& out) {
    size_t start = pos_;
    auto digits = [&] {
      size_t n = 0;
      while (!AtEnd() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        ++pos_;
        ++n;
      }
      return n;
    };
    if (s_[pos_] == '-') ++pos_;
    if (AtEnd()) return Fail("unexpected end of input in a number");
    if (s_[pos_] == '0') {
      ++pos_;
      if (!AtEnd() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        return Fail("numbers must not have leading zeros");
      }
    } else if (digits() == 0) {
      return Fail("invalid number");
    }
    if (!AtEnd() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) return Fail("invalid number: expected digits after '.'");
    }
    if (!AtEnd() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (!AtEnd() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) return Fail("invalid number: expected digits in the exponent");
    }
    out = JsonValue::Number(std::string(s_.substr(start, pos_ - start)));
    return absl::OkStatus();
  }

  // Four hex digits at pos_.
  bool ReadHex4(uint32_t& out) {
    if (pos_ + 4 > s_.size()) return false;
    out = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_ + i];
      out <<= 4;
      if (c >= '0' && c <= '9') {
        out |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        out |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        out |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    pos_ += 4;
    return true;
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  absl::Status ParseString(std::string& out) {
    ++pos_;  // opening quote
    while (true) {
      if (AtEnd()) return Fail("unterminated string");
      unsigned char c = Peek();
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (c < 0x20) return Fail("control character in a string (escape it)");
      if (c >= 0x80) {
        size_t n = Utf8SequenceLength(s_, pos_);
        if (n == 0) return Fail("invalid UTF-8");
        out.append(s_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      ++pos_;
      if (AtEnd()) return Fail("unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          uint32_t cp;
          if (!ReadHex4(cp)) return Fail("invalid \\u escape");
          if (cp >= 0xDC00 && cp <= 0xDFFF) return Fail("unpaired UTF-16 surrogate in \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low;
            if (s_.substr(pos_, 2) != "\\u") return Fail("unpaired UTF-16 surrogate in \\u escape");
            pos_ += 2;
            if (!ReadHex4(low)) return Fail("invalid \\u escape");
            if (low < 0xDC00 || low > 0xDFFF) {
              return Fail("unpaired UTF-16 surrogate in \\u escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8(out, cp);
          break;
        }
        default:
          --pos_;
          return Fail("invalid escape in a string");
      }
    }
  }

  absl::Status ParseArray(JsonValue& out, int depth) {
    if (depth > max_depth_) return Fail("nested too deeply");
    ++pos_;  // [
    std::vector<JsonValue> items;
    SkipWhitespace();
    if (!AtEnd() && s_[pos_] == ']') {
      ++pos_;
      out = JsonValue::Array(std::move(items));
      return absl::OkStatus();
    }
    while (true) {
      SkipWhitespace();
      JsonValue item;
      if (absl::Status st = ParseValue(item, depth); !st.ok()) return st;
      items.push_back(std::move(item));
      SkipWhitespace();
      if (AtEnd()) return Fail("unexpected end of input in an array");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == ']') {
        ++pos_;
        out = JsonValue::Array(std::move(items));
        return absl::OkStatus();
      }
      return Fail("expected ',' or ']' in an array");
    }
  }

  absl::Status ParseObject(JsonValue& out, int depth) {
    if (depth > max_depth_) return Fail("nested too deeply");
    ++pos_;  // {
    std::vector<std::pair<std::string, JsonValue>> members;
    absl::flat_hash_set<std::string> keys;
    SkipWhitespace();
    if (!AtEnd() && s_[pos_] == '}') {
      ++pos_;
      out = JsonValue::Object(std::move(members));
      return absl::OkStatus();
    }
    while (true) {
      SkipWhitespace();
      if (AtEnd() || s_[pos_] != '"') return Fail("expected a string key in an object");
      size_t key_pos = pos_;
      std::string key;
      if (absl::Status st = ParseString(key); !st.ok()) return st;
      if (!keys.insert(key).second) {
        pos_ = key_pos;
        return Fail(Cat("duplicate key \"", key.substr(0, 64), "\""));
      }
      SkipWhitespace();
      if (AtEnd() || s_[pos_] != ':') return Fail("expected ':' after an object key");
      ++pos_;
      SkipWhitespace();
      JsonValue value;
      if (absl::Status st = ParseValue(value, depth); !st.ok()) return st;
      members.emplace_back(std::move(key), std::move(value));
      SkipWhitespace();
      if (AtEnd()) return Fail("unexpected end of input in an object");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == '}') {
        ++pos_;
        out = JsonValue::Object(std::move(members));
        return absl::OkStatus();
      }
      return Fail("expected ',' or '}' in an object");
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
  const int max_depth_;
};

}  // namespace

absl::StatusOr<JsonValue> ParseJson(std::string_view text, int max_depth) {
  return Parser(text, max_depth).ParseDocument();
}

}  // namespace isorun::gateway

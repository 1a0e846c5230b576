#pragma once

// A strict JSON (RFC 8259) parser for request bodies. The protobuf JSON parser is too lenient for
// a public API (it accepts trailing commas, single quotes, duplicate keys, a string where a list
// is expected) and its messages are hard to read, so bodies are parsed here into a small DOM and
// decoded field by field (bodies.h), which lets every error name the offending field.
//
// Rejected: anything but UTF-8 text (invalid sequences, overlong forms, surrogates), lone or
// mismatched \u surrogate escapes, raw control characters in strings, leading zeros, NaN and
// Infinity, duplicate object keys, trailing data, and nesting deeper than `max_depth`.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace isorun::gateway {

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  JsonValue() = default;
  static JsonValue Null() { return JsonValue(); }
  static JsonValue Bool(bool b);
  static JsonValue Number(std::string lexeme);
  static JsonValue String(std::string s);
  static JsonValue Array(std::vector<JsonValue> items);
  static JsonValue Object(std::vector<std::pair<std::string, JsonValue>> members);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  bool bool_value() const { return bool_; }
  // The number as written ("-12", "1.5e3"): decoders decide what they accept.
  const std::string& number_lexeme() const { return text_; }
  const std::string& string_value() const { return text_; }
  const std::vector<JsonValue>& items() const { return items_; }
  // Members in document order; keys are unique.
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return members_; }

 private:
  Kind kind_ = Kind::kNull;
  bool bool_ = false;
  std::string text_;
  std::vector<JsonValue> items_;
  std::vector<std::pair<std::string, JsonValue>> members_;
};

// "object", "string", ...: for messages.
std::string_view KindName(JsonValue::Kind kind);

// Parses one JSON text. Errors are INVALID_ARGUMENT with a message that says what is wrong and at
// which byte offset.
absl::StatusOr<JsonValue> ParseJson(std::string_view text, int max_depth = 32);

}  // namespace isorun::gateway

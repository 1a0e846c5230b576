#pragma once

// A minimal streaming JSON writer for responses we shape by hand (API.md's error body, NDJSON
// lines). Strings are escaped per RFC 8259; invalid UTF-8 is replaced with U+FFFD so the output is
// always valid JSON.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace isorun {

// Appends `s` as a JSON string literal (with quotes) to `out`.
void AppendJsonString(std::string& out, std::string_view s);

// Length of the valid UTF-8 sequence starting at s[i] (1 for ASCII), or 0 when it is invalid:
// truncated, overlong, a surrogate or past U+10FFFF.
size_t Utf8SequenceLength(std::string_view s, size_t i);

// Replaces invalid UTF-8 sequences in `s` with U+FFFD.
std::string SanitizeUtf8(std::string_view s);

class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view value);
  JsonWriter& Int(int64_t value);
  JsonWriter& Double(double value);
  JsonWriter& Bool(bool value);
  JsonWriter& Null();
  // Inserts pre-serialized JSON as a value.
  JsonWriter& Raw(std::string_view json);

  const std::string& str() const { return out_; }
  std::string Take() { return std::move(out_); }

 private:
  void BeforeValue();
  std::string out_;
  // One entry per open container: whether it has had an element yet.
  std::vector<bool> has_element_;
  bool after_key_ = false;
};

}  // namespace isorun

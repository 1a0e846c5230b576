#pragma once

// Reading JSON answers in tests: a body parsed into a protobuf Struct, and its fields by name.

#include <gtest/gtest.h>

#include <string>

#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace isorun::testing {

// Parses a JSON object body into a Struct (fails the test on bad JSON).
inline google::protobuf::Struct Json(const std::string& body) {
  google::protobuf::Struct s;
  auto status = google::protobuf::util::JsonStringToMessage(body, &s);
  EXPECT_TRUE(status.ok()) << "not JSON: " << body;
  return s;
}

// A field of `s`: "" / -1 / an empty Struct when it is missing.
inline std::string Str(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it == s.fields().end() ? "" : it->second.string_value();
}

inline double Num(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it == s.fields().end() ? -1 : it->second.number_value();
}

inline google::protobuf::Struct Obj(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it == s.fields().end() ? google::protobuf::Struct() : it->second.struct_value();
}

}  // namespace isorun::testing

#include "services/kit/json.h"

#include <gtest/gtest.h>

namespace isorun {
namespace {

TEST(Json, WritesNestedValues) {
  JsonWriter w;
  w.BeginObject().Key("a").Int(1).Key("b").BeginArray().String("x").Bool(true).Null().EndArray();
  w.Key("c").BeginObject().EndObject().EndObject();
  EXPECT_EQ(w.str(), R"({"a":1,"b":["x",true,null],"c":{}})");
}

TEST(Json, EscapesControlCharactersAndReplacesInvalidUtf8) {
  std::string out;
  AppendJsonString(out, "q\"\\\n\x01 \xC3\xA9 \xFF \xED\xA0\x80");
  EXPECT_EQ(out, "\"q\\\"\\\\\\n\\u0001 \xC3\xA9 \xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
}

TEST(Json, SanitizeKeepsValidText) {
  EXPECT_EQ(SanitizeUtf8("h\xC3\xA9llo \xF0\x9F\x98\x80"), "h\xC3\xA9llo \xF0\x9F\x98\x80");
  EXPECT_EQ(SanitizeUtf8("\xC3"), "\xEF\xBF\xBD");
}

}  // namespace
}  // namespace isorun

#include "services/gateway/json_value.h"

#include <gtest/gtest.h>

#include <string>

namespace isorun::gateway {
namespace {

TEST(ParseJson, ParsesEveryKind) {
  auto v = ParseJson(R"( {"a": [1, -2.5e3, true, false, null, "x"], "b": {"c": "d"}} )");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->kind(), JsonValue::Kind::kObject);
  ASSERT_EQ(v->members().size(), 2u);
  const JsonValue& a = v->members()[0].second;
  ASSERT_EQ(a.items().size(), 6u);
  EXPECT_EQ(a.items()[0].number_lexeme(), "1");
  EXPECT_EQ(a.items()[1].number_lexeme(), "-2.5e3");
  EXPECT_TRUE(a.items()[2].bool_value());
  EXPECT_FALSE(a.items()[3].bool_value());
  EXPECT_TRUE(a.items()[4].is_null());
  EXPECT_EQ(a.items()[5].string_value(), "x");
  EXPECT_EQ(v->members()[1].second.members()[0].second.string_value(), "d");
}

TEST(ParseJson, DecodesEscapesAndSurrogatePairs) {
  auto v = ParseJson(R"("a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00")");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->string_value(), "a\"\\/\b\f\n\r\t\xC3\xA9\xF0\x9F\x98\x80");
}

TEST(ParseJson, AcceptsValidUtf8) {
  auto v = ParseJson("\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"");
  ASSERT_TRUE(v.ok()) << v.status();
}

TEST(ParseJson, RejectsMalformedDocuments) {
  const char* bad[] = {
      "",
      "   ",
      "{",
      "}",
      "[1,]",
      R"({"a":1,})",
      R"({'a':1})",
      R"({"a" 1})",
      R"({"a":})",
      "{a:1}",
      R"({"a":1} x)",
      R"({"a":1}{})",
      "01",
      "-",
      "1.",
      ".5",
      "1e",
      "+1",
      "NaN",
      "Infinity",
      "-Infinity",
      "tru",
      "nul",
      R"("abc)",
      R"("\x")",
      R"("\u12")",
      R"("\u12G4")",
      "\"a\nb\"",
      "\"\t\"",
      R"({"a":1 "b":2})",
      "[1 2]",
      "\xEF\xBB\xBF{}",
  };
  for (const char* text : bad) {
    auto v = ParseJson(text);
    EXPECT_FALSE(v.ok()) << "accepted: " << text;
    if (!v.ok()) {
      EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(v.status().message().find("malformed JSON"), absl::string_view::npos);
    }
  }
}

TEST(ParseJson, RejectsInvalidUtf8AndSurrogates) {
  const std::string bad[] = {
      "\"\xFF\"",              // not a lead byte
      "\"\xC3\"",              // truncated
      "\"\xC0\xAF\"",          // overlong '/'
      "\"\xE0\x80\xAF\"",      // overlong
      "\"\xED\xA0\x80\"",      // UTF-8 encoded surrogate
      "\"\xF4\x90\x80\x80\"",  // past U+10FFFF
      "\"\x80\"",              // lone continuation byte
      R"("\ud800")",           // lone high surrogate
      R"("\udc00")",           // lone low surrogate
      R"("\ud800\u0041")",     // high surrogate then not a low one
      R"("\ud800x")",
  };
  for (const std::string& text : bad) {
    EXPECT_FALSE(ParseJson(text).ok()) << "accepted: " << text;
  }
  // Raw invalid bytes outside strings are just bad syntax.
  EXPECT_FALSE(ParseJson("{\"a\":\xFF}").ok());
}

TEST(ParseJson, RejectsDuplicateKeys) {
  auto v = ParseJson(R"({"image":"a","image":"b"})");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("duplicate key \"image\""), absl::string_view::npos);
  // The same key in different objects is fine.
  EXPECT_TRUE(ParseJson(R"({"a":{"x":1},"b":{"x":1}})").ok());
}

TEST(ParseJson, LimitsNesting) {
  std::string deep(100000, '[');
  EXPECT_FALSE(ParseJson(deep).ok());  // no stack overflow
  std::string ok = std::string(32, '[') + std::string(32, ']');
  EXPECT_TRUE(ParseJson(ok).ok());
  std::string too_deep = std::string(33, '[') + std::string(33, ']');
  auto v = ParseJson(too_deep);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("nested too deeply"), absl::string_view::npos);
  std::string objects;
  for (int i = 0; i < 1000; ++i) objects += "{\"a\":";
  EXPECT_FALSE(ParseJson(objects).ok());
}

TEST(ParseJson, KeepsNulInStrings) {
  auto v = ParseJson(R"("a\u0000b")");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->string_value(), std::string("a\0b", 3));
}

}  // namespace
}  // namespace isorun::gateway

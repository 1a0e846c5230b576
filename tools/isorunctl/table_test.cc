#include "tools/isorunctl/table.h"

#include <gtest/gtest.h>

#include <sstream>

namespace isorun::ctl {
namespace {

TEST(Table, AlignsColumnsAndMarksEmptyCells) {
  Table table({"NAME", "ID", "NOTE"});
  table.AddRow({"a", "12345", ""});
  table.AddRow({"longer-name", "1", "with space"});
  std::ostringstream out;
  table.Print(out);
  EXPECT_EQ(out.str(),
            "NAME         ID     NOTE\n"
            "a            12345  -\n"
            "longer-name  1      with_space\n");
  EXPECT_EQ(table.size(), 2u);
}

TEST(Table, HeaderOnlyWhenEmpty) {
  Table table({"A", "B"});
  std::ostringstream out;
  table.Print(out);
  EXPECT_EQ(out.str(), "A  B\n");
}

}  // namespace
}  // namespace isorun::ctl

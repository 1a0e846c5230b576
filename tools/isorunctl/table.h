#pragma once

// Plain-text tables for humans and for scripts: a header line, one line per row, columns
// separated by at least two spaces and padded to line up. An empty cell prints as "-", so that
// every line splits on whitespace into the same number of fields (cells never contain spaces).

#include <ostream>
#include <string>
#include <vector>

namespace isorun::ctl {

class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}

  // `cells` has as many entries as the header.
  void AddRow(std::vector<std::string> cells);
  void Print(std::ostream& out) const;
  size_t size() const { return rows_.size(); }

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace isorun::ctl

#include "tools/isorunctl/table.h"

#include <algorithm>
#include <cassert>

namespace isorun::ctl {
namespace {

// Whitespace inside a cell would break the one-field-per-column promise.
std::string Cell(std::string s) {
  if (s.empty()) return "-";
  for (char& c : s) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') c = '_';
  }
  return s;
}

}  // namespace

void Table::AddRow(std::vector<std::string> cells) {
  assert(cells.size() == header_.size());
  cells.resize(header_.size());
  for (std::string& cell : cells) cell = Cell(std::move(cell));
  rows_.push_back(std::move(cells));
}

void Table::Print(std::ostream& out) const {
  std::vector<size_t> widths(header_.size());
  for (size_t i = 0; i < header_.size(); ++i) widths[i] = header_[i].size();
  for (const auto& row : rows_) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string text;
    for (size_t i = 0; i < cells.size(); ++i) {
      text += cells[i];
      if (i + 1 < cells.size()) text.append(widths[i] - cells[i].size() + 2, ' ');
    }
    out << text << '\n';
  };
  line(header_);
  for (const auto& row : rows_) line(row);
}

}  // namespace isorun::ctl

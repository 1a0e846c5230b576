#pragma once

// A fresh PostgreSQL database per test fixture, on the server that `./isorun test` starts
// (ISORUN_TEST_DATABASE_URL points at its maintenance database). Migrations are applied; the
// database is dropped when the object goes away.

#include <string>

namespace isorun::testing {

class TestDatabase {
 public:
  // Fails the calling test (via ADD_FAILURE + exception) when no server is configured.
  TestDatabase();
  // On another server: `admin_url` is its maintenance database's superuser URL (empty: as above).
  explicit TestDatabase(const std::string& admin_url);
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  const std::string& url() const { return url_; }
  const std::string& name() const { return name_; }

  // Runs one SQL statement and returns the first column of the first row ("" if none).
  std::string Scalar(const std::string& sql) const;

 private:
  std::string admin_url_;
  std::string name_;
  std::string url_;
};

// The URL of the maintenance database, or fails the test with instructions.
std::string AdminDatabaseUrl();

}  // namespace isorun::testing

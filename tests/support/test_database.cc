#include "tests/support/test_database.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <pqxx/pqxx>
#include <stdexcept>

#include "services/kit/ids.h"
#include "services/kit/migrate.h"

namespace isorun::testing {
namespace {

// Replaces the database name (the path) of a postgresql:// URL.
std::string WithDatabase(const std::string& url, const std::string& db) {
  auto scheme = url.find("://");
  auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  auto query = url.find('?');
  std::string base = slash == std::string::npos ? url : url.substr(0, slash);
  std::string rest = query == std::string::npos ? "" : url.substr(query);
  return base + "/" + db + rest;
}

}  // namespace

std::string AdminDatabaseUrl() {
  const char* url = std::getenv("ISORUN_TEST_DATABASE_URL");
  if (url == nullptr || *url == '\0') {
    throw std::runtime_error(
        "ISORUN_TEST_DATABASE_URL is not set: run the tests with `./isorun test`, which starts a "
        "throwaway PostgreSQL for them");
  }
  return url;
}

TestDatabase::TestDatabase() : TestDatabase(std::string()) {}

TestDatabase::TestDatabase(const std::string& admin_url)
    : admin_url_(admin_url.empty() ? AdminDatabaseUrl() : admin_url) {
  name_ = "isorun_test_" + RandomHex(8);
  {
    pqxx::connection conn(admin_url_);
    pqxx::nontransaction nt(conn);
    nt.exec("CREATE DATABASE " + name_);
  }
  url_ = WithDatabase(admin_url_, name_);
  auto applied = ApplyMigrations(url_);
  if (!applied.ok()) throw std::runtime_error(std::string(applied.status().message()));
}

TestDatabase::~TestDatabase() {
  try {
    pqxx::connection conn(admin_url_);
    pqxx::nontransaction nt(conn);
    nt.exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception& e) {
    ADD_FAILURE() << "dropping " << name_ << ": " << e.what();
  }
}

std::string TestDatabase::Scalar(const std::string& sql) const {
  pqxx::connection conn(url_);
  pqxx::nontransaction nt(conn);
  auto r = nt.exec(sql);
  if (r.empty() || r[0][0].is_null()) return "";
  return r[0][0].as<std::string>();
}

}  // namespace isorun::testing

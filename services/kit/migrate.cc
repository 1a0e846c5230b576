#include "services/kit/migrate.h"

#include <pqxx/pqxx>

#include <map>

#include "absl/strings/str_cat.h"
#include "services/kit/ids.h"
#include "services/kit/pg.h"

namespace isorun {
namespace {

constexpr const char* kBootstrap =
    "CREATE SCHEMA IF NOT EXISTS isorun_migrations;"
    "CREATE TABLE IF NOT EXISTS isorun_migrations.applied ("
    "  version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
    "  applied_at timestamptz NOT NULL DEFAULT now())";

// Any constant works; it only has to be the same for every process that migrates.
constexpr const char* kLock = "SELECT pg_advisory_lock(7242901)";
constexpr const char* kUnlock = "SELECT pg_advisory_unlock(7242901)";

struct Applied {
  std::string checksum;
  std::string applied_at;
};

std::map<int, Applied> ReadApplied(pqxx::connection& conn) {
  std::map<int, Applied> out;
  pqxx::work tx(conn);
  auto exists = tx.exec("SELECT to_regclass('isorun_migrations.applied') IS NOT NULL");
  if (exists[0][0].as<bool>()) {
    for (const auto& row : tx.exec(
             "SELECT version, checksum, to_char(applied_at AT TIME ZONE 'UTC', "
             "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM isorun_migrations.applied")) {
      out[row[0].as<int>()] = Applied{row[1].as<std::string>(), row[2].as<std::string>()};
    }
  }
  tx.commit();
  return out;
}

}  // namespace

int LatestMigrationVersion() {
  const auto& all = EmbeddedMigrations();
  return all.empty() ? 0 : all.back().version;
}

absl::StatusOr<std::vector<std::string>> ApplyMigrations(const std::string& database_url) {
  std::vector<std::string> done;
  try {
    pqxx::connection conn(database_url);
    {
      pqxx::nontransaction nt(conn);
      nt.exec(kLock);
    }
    struct Unlock {
      pqxx::connection& c;
      ~Unlock() {
        try {
          pqxx::nontransaction nt(c);
          nt.exec(kUnlock);
        } catch (...) {
        }
      }
    } unlock{conn};
    {
      pqxx::work tx(conn);
      tx.exec(kBootstrap);
      tx.commit();
    }
    auto applied = ReadApplied(conn);
    for (const Migration& m : EmbeddedMigrations()) {
      std::string checksum = Sha256Hex(m.sql);
      auto it = applied.find(m.version);
      if (it != applied.end()) {
        if (it->second.checksum != checksum) {
          return absl::FailedPreconditionError(absl::StrCat(
              "migration ", m.name, " was changed after it was applied (recorded checksum ",
              it->second.checksum.substr(0, 12), ", file ", checksum.substr(0, 12),
              "): add a new migration instead of editing an applied one"));
        }
        continue;
      }
      pqxx::work tx(conn);
      tx.exec(m.sql);
      tx.exec_params("INSERT INTO isorun_migrations.applied (version, name, checksum) "
                     "VALUES ($1, $2, $3)",
                     m.version, m.name, checksum);
      tx.commit();
      done.push_back(m.name);
    }
  } catch (const pqxx::sql_error& e) {
    return absl::InternalError(absl::StrCat("migration failed: ", e.what(), " (query: ",
                                            e.query().substr(0, 200), ")"));
  } catch (const std::exception& e) {
    return StatusFromPgException(e);
  }
  return done;
}

absl::StatusOr<std::vector<MigrationStatus>> GetMigrationStatus(const std::string& database_url) {
  std::vector<MigrationStatus> out;
  try {
    pqxx::connection conn(database_url);
    auto applied = ReadApplied(conn);
    for (const Migration& m : EmbeddedMigrations()) {
      MigrationStatus s;
      s.version = m.version;
      s.name = m.name;
      auto it = applied.find(m.version);
      if (it != applied.end()) {
        s.applied = true;
        s.applied_at = it->second.applied_at;
        s.checksum_mismatch = it->second.checksum != Sha256Hex(m.sql);
      }
      out.push_back(std::move(s));
    }
  } catch (const std::exception& e) {
    return StatusFromPgException(e);
  }
  return out;
}

}  // namespace isorun

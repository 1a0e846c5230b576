// DNS messages as the runner's forwarder reads them: queries come from sandboxes (hostile), answers
// from the upstream resolver. Nothing crashes or reads out of bounds; every reply the forwarder
// builds is a well-formed header with the query's id and echoes exactly the question it parsed.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_split.h"
#include "fuzz/fuzz_check.h"
#include "services/runner/dns_forwarder.h"

namespace {

uint16_t Get16(std::string_view m, size_t at) {
  return static_cast<uint16_t>((static_cast<uint8_t>(m[at]) << 8) | static_cast<uint8_t>(m[at + 1]));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace isorun::runner;
  std::string_view m(reinterpret_cast<const char*>(data), size);
  (void)DnsAnswerAddresses(m);
  auto q = ParseDnsQuery(m);
  if (!q.ok()) {
    // The forwarder's FORMERR for an unparsable query of at least a header.
    if (m.size() >= 12) {
      DnsQuestion bare;
      bare.end = 12;
      std::string r = DnsReply(m, bare, kDnsFormErr);
      FUZZ_CHECK(r.size() == 12 && Get16(r, 0) == Get16(m, 0) && (r[3] & 0x0f) == kDnsFormErr);
      FUZZ_CHECK(Get16(r, 4) == 0 && Get16(r, 6) == 0);
    }
    return 0;
  }
  FUZZ_CHECK(q->end > 12 && q->end <= m.size());
  FUZZ_CHECK(q->name.size() <= 255);
  for (int rcode : {kDnsNoError, kDnsServFail, kDnsNxDomain, kDnsRefused}) {
    std::string r = DnsReply(m, *q, rcode);
    FUZZ_CHECK(r.size() == q->end);
    FUZZ_CHECK(Get16(r, 0) == q->id);
    FUZZ_CHECK((static_cast<uint8_t>(r[2]) & 0x80) != 0);  // an answer
    FUZZ_CHECK((r[3] & 0x0f) == rcode);
    FUZZ_CHECK(Get16(r, 4) == 1 && Get16(r, 6) == 0 && Get16(r, 8) == 0 && Get16(r, 10) == 0);
    // The reply names no address, whatever the query carried after its question. (It may not
    // even parse: a compressed name pointing into the header reads the answer's flags.)
    auto addrs = DnsAnswerAddresses(r);
    FUZZ_CHECK(!addrs.ok() || addrs->empty());
  }
  // A name the parser returns, asked again in a query of our own, reads back the same when it is
  // an ordinary name (labels of 1-63 characters).
  bool ordinary = !q->name.empty() && q->name.size() <= 253;
  for (absl::string_view label : absl::StrSplit(q->name, '.')) {
    ordinary = ordinary && !label.empty() && label.size() <= 63;
  }
  if (ordinary) {
    auto again = ParseDnsQuery(DnsQuery(q->id, q->name, q->qtype));
    FUZZ_CHECK(again.ok() && again->name == q->name && again->qtype == q->qtype);
  }
  return 0;
}

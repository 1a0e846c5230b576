// exec:stream's NDJSON writer gets whatever bytes a command prints: every line it writes is one
// line (a newline only at its end) of valid JSON that the gateway's own strict parser reads back
// as one object, whatever the bytes.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "services/gateway/json_value.h"
#include "services/gateway/render.h"
#include "services/kit/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  for (int kind = 0; kind < 3; ++kind) {
    isorun::v1::ExecChunk chunk;
    if (kind == 0) chunk.set_stdout(bytes);
    if (kind == 1) chunk.set_stderr(bytes);
    if (kind == 2) {
      int32_t code = 0;
      if (size >= 4) std::memcpy(&code, data, 4);
      chunk.set_exit_code(code);
    }
    const std::string line = isorun::gateway::ExecChunkLine(chunk);
    FUZZ_CHECK(!line.empty() && line.back() == '\n');
    FUZZ_CHECK(line.find('\n') == line.size() - 1);
    auto parsed = isorun::gateway::ParseJson(std::string_view(line).substr(0, line.size() - 1));
    FUZZ_CHECK(parsed.ok());
    FUZZ_CHECK(parsed->kind() == isorun::gateway::JsonValue::Kind::kObject);
    FUZZ_CHECK(parsed->members().size() == 1);
    // Text that is valid UTF-8 comes back exactly as the command printed it.
    if (kind < 2 && isorun::SanitizeUtf8(bytes) == bytes) {
      FUZZ_CHECK(parsed->members()[0].second.string_value() == bytes);
    }
  }
  return 0;
}

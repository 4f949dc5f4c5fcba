// kiln's default OpenMP wait policy (core/startup.cpp): chosen unless the environment chose, and
// the environment the program sees afterwards is exactly the one it was started with.
#include <fstream>
#include <iterator>
#include <sstream>

#include "test_util.hpp"

using namespace kiln;

TEST_CASE("wait policy: kiln's default unless the environment sets one") {
  const std::string p = wait_policy();
  if (const char* w = std::getenv("OMP_WAIT_POLICY")) CHECK(p == fmt::format("OMP_WAIT_POLICY={}", w));
  else if (const char* s = std::getenv("GOMP_SPINCOUNT")) CHECK(p == fmt::format("GOMP_SPINCOUNT={}", s));
  else CHECK(p == "GOMP_SPINCOUNT=3000 (kiln's default)");
}

TEST_CASE("wait policy: the start-up entry gives back the environment it borrowed from") {
  std::ifstream f("/proc/self/environ", std::ios::binary);  // the block the kernel passed, as started
  REQUIRE(f);
  const std::string block((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::size_t n = 0;
  for (std::size_t at = 0; at < block.size();) {
    const std::size_t end = block.find('\0', at);
    const std::string entry = block.substr(at, end - at);
    at = end + 1;
    const std::size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    const char* now = std::getenv(entry.substr(0, eq).c_str());
    CHECK_MESSAGE(now != nullptr, entry);
    if (now) CHECK(std::string(now) == entry.substr(eq + 1));
    ++n;
  }
  CHECK(n > 0);
  if (!std::getenv("OMP_WAIT_POLICY") && !block.empty() && block.find("GOMP_SPINCOUNT=") == std::string::npos)
    CHECK(std::getenv("GOMP_SPINCOUNT") == nullptr);  // kiln's setting was only lent to libgomp
}

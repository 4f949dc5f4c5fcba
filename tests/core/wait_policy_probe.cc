// Started by tests/core/test_wait_policy.cpp with a chosen environment, and by CTest under
// mpirun: prints the spin count libgomp itself read at start-up (from omp_display_env, not from
// the environment), kiln::wait_policy(), and whether the program sees exactly the environment it
// was started with. `--expect N`: exit 1 unless libgomp's spin count is N.
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <kiln/core/parallel.hpp>
#include <string>

#include "process_util.hpp"

namespace {

// libgomp's "GOMP_SPINCOUNT = 'N'" line of omp_display_env, which writes to stderr.
long libgomp_spin_count() {
  const std::string text = kt::stderr_of([] { omp_display_env(1); });
  const char* key = "GOMP_SPINCOUNT = '";
  const std::size_t at = text.find(key);
  return at == std::string::npos ? -1 : std::atol(text.c_str() + at + std::strlen(key));
}

// The first variable of the block the program was started with that getenv does not return as
// it was, or "" when every one does.
std::string changed_variable() {
  bool had_spincount = false;
  for (const auto& [name, value] : kt::start_environment()) {
    had_spincount |= name == "GOMP_SPINCOUNT";
    const char* now = std::getenv(name.c_str());
    if (!now || value != now) return name + "=" + value;
  }
  if (!had_spincount && std::getenv("GOMP_SPINCOUNT")) return "GOMP_SPINCOUNT (added)";
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  const long spin = libgomp_spin_count();
  const std::string changed = changed_variable();
  std::printf("libgomp GOMP_SPINCOUNT=%ld\nkiln %s\n", spin, kiln::wait_policy().c_str());
  std::printf("environment %s\n", changed.empty() ? "intact" : ("changed: " + changed).c_str());
  if (argc == 3 && !std::strcmp(argv[1], "--expect")) return spin == std::atol(argv[2]) && changed.empty() ? 0 : 1;
  return 0;
}

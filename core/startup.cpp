// kiln's default OpenMP wait policy, chosen before the OpenMP runtime starts.
//
// libgomp's own default spins ~300,000 pause instructions (milliseconds) after every parallel
// region. The spinning threads look busy to the scheduler: with another process on one of two
// cores, each region's end waits a time slice for the descheduled thread, and training steps ran
// ~100x slower (bench/load_bench). OMP_WAIT_POLICY=PASSIVE (sleep at once) fixes that but pays a
// futex wake-up per region, ~1.6x slower on a quiet machine. A bounded spin of kSpinCount keeps
// back-to-back regions on spinning threads and puts idle ones to sleep (measurements: core/README.md).
//
// libgomp reads GOMP_SPINCOUNT once, in its constructor, before any static initializer of the
// program, so a setenv in kiln's start-up code comes too late. An executable's .preinit_array runs
// before every shared library's constructor, but before libc's too: environ is not set up yet and
// a setenv there is lost when libc installs the kernel's environment block. So the entry lends one
// slot of that block: it points the slot at "GOMP_SPINCOUNT=..." until libgomp has read it, and a
// constructor of the program (after every library's) puts the lent variable back. Only library
// constructors run in between; the lent variable is never one they read (OMP_*, LD_*, ... are
// skipped). A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins: then nothing is touched.
//
// This file is its own static library (kiln_startup), pulled into executables only: the linker
// refuses .preinit_array in a shared library (CMakeLists.txt).
#include <cstring>
#include <initializer_list>

extern "C" {
/// The GOMP_SPINCOUNT kiln chose at start-up, or -1 when it chose none (read by kiln::wait_policy,
/// weakly, so programs without this library still link).
long kiln_startup_spin_count = -1;
}

namespace {

constexpr long kSpinCount = 3000;
char kSetting[] = "GOMP_SPINCOUNT=3000";

char** lent_slot = nullptr;
char* lent_value = nullptr;

bool starts_with(const char* s, const char* prefix) { return std::strncmp(s, prefix, std::strlen(prefix)) == 0; }

// Variables a library constructor may read while the slot is lent: never lend those.
bool may_be_read_at_startup(const char* var) {
  for (const char* p : {"OMP_", "GOMP_", "KMP_", "LD_", "MALLOC", "GLIBC", "LC_", "LANG", "TZ", "OPENBLAS", "CUDA",
                        "HOME", "PATH", "TMP"})
    if (starts_with(var, p)) return true;
  return false;
}

void lend_slot(int, char**, char** envp) {
  if (!envp) return;
  for (char** e = envp; *e; ++e)
    if (starts_with(*e, "OMP_WAIT_POLICY=") || starts_with(*e, "GOMP_SPINCOUNT=")) return;  // the user's choice
  for (char** e = envp; *e; ++e)
    if (!may_be_read_at_startup(*e)) {
      lent_slot = e, lent_value = *e;
      *e = kSetting;
      kiln_startup_spin_count = kSpinCount;
      return;
    }
}

// libgomp has read its environment by now (the program's constructors run after its libraries').
__attribute__((constructor(101))) void return_slot() {
  if (lent_slot) *lent_slot = lent_value;
}

__attribute__((section(".preinit_array"), used)) void (*preinit_entry)(int, char**, char**) = lend_slot;

}  // namespace

// kiln's default OpenMP wait policy, chosen before the OpenMP runtime starts.
//
// libgomp's own default spins ~300,000 pause instructions (milliseconds) after every parallel
// region. The spinning threads look busy to the scheduler: with another process on one of two
// cores, each region's end waits a time slice for the descheduled thread, and training steps ran
// ~27-100x slower (bench/load_bench). OMP_WAIT_POLICY=PASSIVE (sleep at once) fixes that but pays
// a futex wake-up per region, ~1.6x slower on a quiet machine. A bounded spin of kSpinCount keeps
// back-to-back regions on spinning threads and puts idle ones to sleep (core/README.md, "Threads").
//
// libgomp reads GOMP_SPINCOUNT once, in its constructor, before any static initializer of the
// program, and offers no call to change it later, so a setenv in kiln's start-up code comes too
// late. An executable's .preinit_array runs before every shared library's constructor, but before
// libc's too: libc's environ is not set up yet, and a setenv there is lost when libc's constructor
// installs the environment block the kernel passed (the envp given to this entry). So the entry
// lends one slot of that block: it points the slot at "GOMP_SPINCOUNT=..." while the libraries'
// constructors run, and a constructor of the program (they run after every library's) puts the
// borrowed variable back. The slot lent is `_` (the shell's "last command", which no library
// reads) where present, else the first variable no start-up code is known to read. An
// OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment wins: then nothing is touched. An
// environment with nothing to borrow (empty, or only such variables) keeps libgomp's default.
//
// The entry calls no library function: under a sanitizer its interceptors may not be ready yet.
// This file is its own static library (kiln_startup, exported as kiln::startup), pulled into
// executables only: the linker refuses .preinit_array in a shared library (CMakeLists.txt).
#include <cstdlib>

extern "C" {
/// What the entry did, read by kiln::wait_policy (weakly, so programs without this library still
/// link): the GOMP_SPINCOUNT it lent to libgomp, kUserChose, or kNothingToBorrow.
long kiln_startup_spin_count = -1;
}

extern char** environ;

namespace {

constexpr long kSpinCount = 3000;
constexpr long kUserChose = -1, kNothingToBorrow = -2;
char kSetting[] = "GOMP_SPINCOUNT=3000";

char* lent_value = nullptr;

bool starts_with(const char* s, const char* prefix) {
  for (; *prefix; ++s, ++prefix)
    if (*s != *prefix) return false;
  return true;
}

// Variables a library constructor may read while the slot is lent: never lend those.
bool may_be_read_at_startup(const char* var) {
  static const char* const kPrefixes[] = {"OMP_",  "GOMP_",    "KMP_",  "LD_",   "MALLOC", "GLIBC",  "LC_",   "LANG",
                                          "TZ",    "OPENBLAS", "CUDA",  "NCCL",  "DNNL_",  "ONEDNN", "OMPI_", "OPAL_",
                                          "PMIX_", "PRTE_",    "ORTE_", "HWLOC", "UCX_",   "ASAN_",  "LSAN_", "UBSAN_",
                                          "TSAN_", "MSAN_",    "HOME",  "PATH",  "TMP",    "KILN_"};
  for (const char* p : kPrefixes)
    if (starts_with(var, p)) return true;
  return false;
}

void lend_slot(int, char**, char** envp) {
  kiln_startup_spin_count = kNothingToBorrow;
  if (!envp) return;
  char** slot = nullptr;
  for (char** e = envp; *e; ++e) {
    if (starts_with(*e, "OMP_WAIT_POLICY=") || starts_with(*e, "GOMP_SPINCOUNT=")) {
      kiln_startup_spin_count = kUserChose;
      return;
    }
    if (starts_with(*e, "_=")) slot = e;
    else if (!slot && !may_be_read_at_startup(*e)) slot = e;
  }
  if (!slot) return;
  lent_value = *slot;
  *slot = kSetting;
  kiln_startup_spin_count = kSpinCount;
}

// libgomp has read its environment by now (the program's constructors run after its libraries').
// The slot is found again by its content: a library constructor's setenv may have moved the array.
__attribute__((constructor(101))) void return_slot() {
  if (!lent_value) return;
  for (char** e = environ; e && *e; ++e)
    if (*e == kSetting) {
      *e = lent_value;
      return;
    }
  putenv(lent_value);  // a constructor unset GOMP_SPINCOUNT, taking the lent slot with it
}

__attribute__((section(".preinit_array"), used)) void (*preinit_entry)(int, char**, char**) = lend_slot;

}  // namespace

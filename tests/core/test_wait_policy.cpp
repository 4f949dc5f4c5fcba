// kiln's default OpenMP wait policy (core/startup.cpp): libgomp itself reads kiln's spin count
// unless the environment chose one, and the program's environment is exactly the one it was
// started with. The child processes are wait_policy_probe (tests/core/wait_policy_probe.cc),
// whose path CMake passes as KILN_WAIT_PROBE; it reports libgomp's own setting.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "process_util.hpp"
#include "test_util.hpp"

using namespace kiln;

namespace {

// Runs the probe with exactly `env`; its stdout and stderr together.
std::string run_probe(std::vector<std::string> env) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string path = KILN_WAIT_PROBE;
  char* argv[] = {path.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, path.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  REQUIRE_MESSAGE(rc == 0, "posix_spawn " << path << " failed: " << std::strerror(rc));
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), out);
  return out;
}

bool has_line(const std::string& out, const std::string& line) {
  return ("\n" + out).find("\n" + line + "\n") != std::string::npos;
}

}  // namespace

TEST_CASE("wait policy: libgomp reads kiln's spin count, and the borrowed variable comes back") {
  // `_` (set by shells) is the slot lent; without it, the first variable no start-up code reads.
  for (auto env : {std::vector<std::string>{"PATH=/usr/bin", "_=/bin/probe", "FOO=bar"},
                   std::vector<std::string>{"HOME=/root", "OMP_NUM_THREADS=2", "FOO=bar", "BAZ=1"},
                   std::vector<std::string>{"NOTHING_ELSE="}}) {
    const std::string out = run_probe(env);
    INFO(out);
    CHECK(has_line(out, "libgomp GOMP_SPINCOUNT=3000"));
    CHECK(has_line(out, "kiln GOMP_SPINCOUNT=3000 (kiln's default)"));
    CHECK(has_line(out, "environment intact"));
  }
}

TEST_CASE("wait policy: the user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins") {
  std::string out = run_probe({"FOO=bar", "GOMP_SPINCOUNT=12345"});
  CHECK_MESSAGE(has_line(out, "libgomp GOMP_SPINCOUNT=12345"), out);
  CHECK_MESSAGE(has_line(out, "kiln GOMP_SPINCOUNT=12345"), out);
  CHECK_MESSAGE(has_line(out, "environment intact"), out);
  out = run_probe({"_=/bin/probe", "OMP_WAIT_POLICY=PASSIVE"});
  CHECK_MESSAGE(has_line(out, "libgomp GOMP_SPINCOUNT=0"), out);
  CHECK_MESSAGE(has_line(out, "kiln OMP_WAIT_POLICY=PASSIVE"), out);
  CHECK_MESSAGE(has_line(out, "environment intact"), out);
}

TEST_CASE("wait policy: with nothing to borrow, libgomp's default and wait_policy says why") {
  for (auto env : {std::vector<std::string>{}, std::vector<std::string>{"OMP_NUM_THREADS=2", "PATH=/usr/bin"}}) {
    const std::string out = run_probe(env);
    INFO(out);
    CHECK(has_line(out, "libgomp GOMP_SPINCOUNT=300000"));
    CHECK(out.find("kiln libgomp's default (the environment had no variable") != std::string::npos);
    CHECK(has_line(out, "environment intact"));
  }
}

TEST_CASE("wait policy: this test program's environment is the one it was started with") {
  const auto started = kt::start_environment();  // the block the kernel passed, as started
  bool had_spincount = false;
  for (const auto& [name, value] : started) {
    const char* now = std::getenv(name.c_str());
    CHECK_MESSAGE(now != nullptr, name);
    if (now) CHECK(std::string(now) == value);
    had_spincount |= name == "GOMP_SPINCOUNT";
  }
  CHECK(!started.empty());
  if (!had_spincount) CHECK(std::getenv("GOMP_SPINCOUNT") == nullptr);
}

#pragma once
// Helpers about the test process itself, light enough for the helper programs beside the suites
// (tests/core/wait_policy_probe.cc includes it without doctest or kiln).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace kt {

/// What f() writes to stderr (file descriptor 2, so C stdio, iostreams and libraries alike).
/// stderr comes back even when f throws.
template <typename F>
std::string stderr_of(F&& f) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> tmp(std::tmpfile(), &std::fclose);
  if (!tmp) throw std::system_error(errno, std::generic_category(), "stderr_of: tmpfile");
  std::fflush(stderr);
  struct Restore {
    int saved = dup(2);
    ~Restore() {
      std::fflush(stderr);
      dup2(saved, 2);
      close(saved);
    }
  };
  {
    Restore restore;
    dup2(fileno(tmp.get()), 2);
    f();
  }
  std::rewind(tmp.get());
  std::string text;
  for (int c; (c = std::fgetc(tmp.get())) != EOF;) text.push_back(static_cast<char>(c));
  return text;
}

/// The environment the process was started with (/proc/self/environ, as the kernel passed it,
/// whatever the program set since): (name, value) pairs in order, entries without a name skipped.
inline std::vector<std::pair<std::string, std::string>> start_environment() {
  std::ifstream f("/proc/self/environ", std::ios::binary);
  const std::string block((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::pair<std::string, std::string>> vars;
  for (std::size_t at = 0; at < block.size();) {
    std::size_t end = block.find('\0', at);
    if (end == std::string::npos) end = block.size();
    const std::string entry = block.substr(at, end - at);
    at = end + 1;
    const std::size_t eq = entry.find('=');
    if (eq != std::string::npos && eq != 0) vars.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
  }
  return vars;
}

}  // namespace kt

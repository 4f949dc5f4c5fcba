#include <kiln/kiln.hpp>

// kiln inside a shared library: a loss value and kiln's wait policy, for shared_main.cpp.
__attribute__((visibility("default"))) float consumer_loss(std::string* wait_policy) {
  *wait_policy = kiln::wait_policy();
  return kiln::ones({4, 3}).sum().item<float>();
}

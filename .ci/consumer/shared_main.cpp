#include <cstdio>
#include <cstdlib>
#include <string>

float consumer_loss(std::string* wait_policy);

// kiln reached only through a shared library: kiln::startup linked here still sets the wait policy.
int main() {
  std::string policy;
  const float loss = consumer_loss(&policy);
  std::printf("consumer_shared: loss %.1f, wait policy %s\n", loss, policy.c_str());
  const bool user_chose = std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT");
  return loss == 12.0f && (user_chose || policy == "GOMP_SPINCOUNT=3000 (kiln's default)") ? 0 : 1;
}

#include <cstdlib>
#include <kiln/kiln.hpp>

int main() {
  auto w = kiln::randn({3, 2}).requires_grad_();
  auto x = kiln::ones({4, 3});
  auto loss = kiln::matmul(x, w).pow(2).mean();
  loss.backward();
  fmt::print("consumer ok: loss {:.4f}, grad shape {}\n", loss.item<float>(), kiln::shape_str(w.grad().shape()));
  // The run-log API links from an installed kiln too (Cairo travels in kiln's link interface).
  kiln::io::MetricsLog log("", {"step", "loss"});
  fmt::print("{}; charts {}\n", log.row({1, loss.item<double>()}),
             kiln::io::charts_available() ? "available" : "not built");
  if (kiln::io::charts_available())
    kiln::io::LineChart("consumer", "step", "loss").add("loss", {0, 1}, {2, 1}).write_png("consumer_chart.png");
  // find_package(kiln) brings kiln's start-up entry into the program (core/README.md, "Threads").
  const std::string policy = kiln::wait_policy();
  fmt::print("consumer wait policy: {}\n", policy);
  const bool user_chose = std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT");
  const bool policy_ok = user_chose || policy == "GOMP_SPINCOUNT=3000 (kiln's default)";
  return w.grad().shape() == kiln::Shape{3, 2} && policy_ok ? 0 : 1;
}

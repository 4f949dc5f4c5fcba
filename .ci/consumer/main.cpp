#include <kiln/kiln.hpp>

int main() {
  auto w = kiln::randn({3, 2}).requires_grad_();
  auto x = kiln::ones({4, 3});
  auto loss = kiln::matmul(x, w).pow(2).mean();
  loss.backward();
  fmt::print("consumer ok: loss {:.4f}, grad shape {}\n", loss.item<float>(), kiln::shape_str(w.grad().shape()));
  return w.grad().shape() == kiln::Shape{3, 2} ? 0 : 1;
}

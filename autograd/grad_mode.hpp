#pragma once
/// Grad mode (thread-local) and anomaly mode.
///   { kiln::NoGradGuard g; w.sub_(w.grad() * lr); }   // not recorded
///   kiln::autograd::set_anomaly_mode(true);           // NaN/Inf in backward -> kiln::Error naming the op

namespace kiln {

namespace autograd {
bool grad_enabled();
void set_grad_enabled(bool on);
bool anomaly_mode();
void set_anomaly_mode(bool on);
}  // namespace autograd

/// Disables gradient recording in this thread while alive.
class NoGradGuard {
 public:
  NoGradGuard() : prev_(autograd::grad_enabled()) { autograd::set_grad_enabled(false); }
  ~NoGradGuard() { autograd::set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

/// Sets grad mode to `on` in this thread while alive.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool on) : prev_(autograd::grad_enabled()) { autograd::set_grad_enabled(on); }
  ~GradModeGuard() { autograd::set_grad_enabled(prev_); }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool prev_;
};

/// Turns anomaly detection on while alive.
class AnomalyGuard {
 public:
  AnomalyGuard() : prev_(autograd::anomaly_mode()) { autograd::set_anomaly_mode(true); }
  ~AnomalyGuard() { autograd::set_anomaly_mode(prev_); }
  AnomalyGuard(const AnomalyGuard&) = delete;
  AnomalyGuard& operator=(const AnomalyGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace kiln

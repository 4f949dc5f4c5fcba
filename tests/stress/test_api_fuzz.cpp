// A randomized API fuzzer (issue 11): a few hundred seeded sequences of ops over random shapes
// (0-size and size-1 broadcast dims included), random views (transpose, permute, strided slices,
// select, expand, ...) and random dtypes. Every op either throws kiln::Error or gives what an
// independent float64 reference below computes: the shape, the dtype (PyTorch's promotion rule,
// 0-dim operands included) and the values within the dtype's rounding. Inputs the reference
// rejects (shapes that do not broadcast, dims out of range, indices out of range, in-place writes
// into an expanded view or of a result the target cannot hold) must throw. Never a crash, never a
// silent broadcast. CI also runs it under ASan + UBSan. A failure prints the seed and the op log.
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <sstream>

#include "test_util.hpp"

using namespace kiln;

namespace {

// ---- the reference: row-major float64 values and the dtype kiln should give ----
struct Ref {
  Shape shape;
  DType dtype = kFloat32;
  std::vector<double> v;
};

std::int64_t count(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Shape row_major_strides(const Shape& s) {
  Shape st(s.size(), 1);
  for (std::int64_t i = static_cast<std::int64_t>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

// Calls fn(out_flat, idx) for every multi-index of `shape` in row-major order.
template <typename Fn>
void for_each_index(const Shape& shape, Fn&& fn) {
  const std::int64_t n = count(shape);
  std::vector<std::int64_t> idx(shape.size(), 0);
  for (std::int64_t f = 0; f < n; ++f) {
    fn(f, idx);
    for (std::int64_t d = static_cast<std::int64_t>(shape.size()) - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

// Flat index into `s` (row-major) of the element that broadcasts to `idx` of an `out`-shaped result.
std::int64_t bcast_flat(const Shape& s, const Shape& out, const std::vector<std::int64_t>& idx) {
  const Shape st = row_major_strides(s);
  std::int64_t f = 0;
  const std::size_t lead = out.size() - s.size();
  for (std::size_t d = 0; d < s.size(); ++d)
    if (s[d] != 1) f += idx[lead + d] * st[d];
  return f;
}

std::optional<Shape> broadcast_shapes(const Shape& a, const Shape& b) {
  const std::size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const std::int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1) return std::nullopt;
    out[i] = da == 1 ? db : da;
  }
  return out;
}

bool floating(DType d) { return d == kFloat32 || d == kFloat64 || d == kBFloat16 || d == kFloat16; }
int category(DType d) { return d == kBool ? 0 : floating(d) ? 2 : 1; }
double machine_eps(DType d) {
  switch (d) {
    case DType::BFloat16: return 0x1p-7;
    case DType::Float16: return 0x1p-10;
    case DType::Float32: return 0x1p-23;
    case DType::Float64: return 0x1p-52;
    default: return 0;
  }
}
double min_subnormal(DType d) {
  switch (d) {
    case DType::BFloat16: return 0x1p-133;
    case DType::Float16: return 0x1p-24;
    case DType::Float32: return 0x1p-149;
    case DType::Float64: return 0x1p-1074;
    default: return 0;
  }
}
double max_finite(DType d) {
  switch (d) {
    case DType::BFloat16: return 3.3895313892515355e38;
    case DType::Float16: return 65504.0;
    case DType::Float32: return std::numeric_limits<float>::max();
    default: return std::numeric_limits<double>::max();
  }
}
// Accumulation precision of reductions and matmul: float32 for every dtype narrower than float64.
double acc_eps(DType d) { return d == kFloat64 ? 0x1p-52 : 0x1p-23; }

// Written out here rather than taken from core/dtype.hpp: the lattice bool < int64 < {bf16, f16} <
// float32 < float64, with bf16 and f16 meeting at float32.
DType promote(DType a, DType b) {
  if (a == b) return a;
  auto rank = [](DType d) {
    switch (d) {
      case DType::Bool: return 0;
      case DType::Int64: return 1;
      case DType::BFloat16:
      case DType::Float16: return 2;
      case DType::Float32: return 3;
      default: return 4;
    }
  };
  if (rank(a) == 2 && rank(b) == 2) return kFloat32;
  return rank(a) > rank(b) ? a : b;
}

// torch.result_type for two tensor operands: a 0-dim tensor beside an n-dim one counts only when
// its category (bool < integer < floating) is higher.
DType result_type(const Ref& a, const Ref& b) {
  const bool za = a.shape.empty(), zb = b.shape.empty();
  if (za == zb) return promote(a.dtype, b.dtype);
  const Ref& dim = za ? b : a;
  const Ref& zero = za ? a : b;
  if (floating(dim.dtype)) return dim.dtype;
  if (dim.dtype == kBool || floating(zero.dtype)) return promote(dim.dtype, zero.dtype);
  return dim.dtype;
}

double round_to(double v, DType d) {
  switch (d) {
    case DType::Bool: return v != 0 ? 1 : 0;  // NaN is true
    case DType::Int64: {
      if (std::isnan(v)) return 0;
      if (v >= 9.2233720368547758e18) return static_cast<double>(std::numeric_limits<std::int64_t>::max());
      if (v <= -9.2233720368547758e18) return static_cast<double>(std::numeric_limits<std::int64_t>::min());
      return std::trunc(v);
    }
    case DType::Float32: return static_cast<float>(v);
    case DType::BFloat16: return static_cast<float>(BFloat16(v));
    case DType::Float16: return static_cast<float>(Half(v));
    default: return v;
  }
}

Ref values_of(const Tensor& t) {
  Ref r{t.shape(), t.dtype(), {}};
  r.v = t.to(kFloat64).contiguous().to_vector<double>();
  return r;
}

// ---- what kiln must do for one call ----
enum class Expect { Value, ValueOrError, Error };
struct Outcome {
  Expect kind = Expect::Value;
  Ref ref;                  // the values rounded to ref.dtype
  std::vector<double> tol;  // absolute slack per element on top of 2 ulps of the result dtype
  std::string why;          // for Error: what the reference rejected
};
Outcome error(std::string why) { return {Expect::Error, {}, {}, std::move(why)}; }

struct Stats {
  int values = 0, errors_expected = 0, errors_allowed = 0;
};

// ---- the fuzzer state: a pool of live tensors with their reference values ----
struct Fuzzer {
  std::mt19937_64 rng;
  std::vector<Tensor> pool;
  std::ostringstream log;
  Stats* stats;

  Fuzzer(std::uint64_t seed, Stats* s) : rng(seed), stats(s) {}

  std::int64_t pick(std::int64_t lo, std::int64_t hi) {  // inclusive
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  }
  bool coin(double p = 0.5) { return std::bernoulli_distribution(p)(rng); }

  DType random_dtype() {
    static const DType all[] = {kFloat32, kFloat32, kFloat64, kBFloat16, kFloat16, kInt64, kBool};
    return all[pick(0, 6)];
  }
  Shape random_shape(int max_dims = 4) {
    static const std::int64_t sizes[] = {0, 1, 1, 2, 3, 3, 4, 5, 7};
    Shape s(pick(0, max_dims));
    for (auto& d : s) d = sizes[pick(0, 8)];
    while (count(s) > 400) s.back() = 1;
    return s;
  }
  Tensor random_tensor(const Shape& s, DType d) {
    const std::int64_t n = count(s);
    std::vector<double> v(n);
    for (auto& x : v) {
      if (d == kBool) x = coin() ? 1 : 0;
      else if (d == kInt64) x = static_cast<double>(pick(-5, 5));
      else x = std::uniform_real_distribution<double>(-3, 3)(rng);
    }
    Tensor t = tensor(v, s, TensorOptions(kFloat64)).to(d);
    // Sometimes hand out a non-contiguous tensor with the same values.
    if (s.size() >= 2 && coin(0.3)) t = t.transpose(0, 1).contiguous().transpose(0, 1);
    return t;
  }
  const Tensor& any() { return pool[pick(0, static_cast<std::int64_t>(pool.size()) - 1)]; }
  // An operand shaped to broadcast against x most of the time (a suffix, with some dims set to
  // 1), otherwise random.
  Tensor partner(const Tensor& x) {
    if (coin(0.25)) return any();
    Shape s(x.shape().begin() + pick(0, x.dim()), x.shape().end());
    for (auto& d : s)
      if (coin(0.3)) d = 1;
    if (coin(0.2)) s.insert(s.begin(), pick(1, 2));
    if (coin(0.1) && !s.empty()) s[pick(0, static_cast<std::int64_t>(s.size()) - 1)] += 1;  // may not broadcast
    return random_tensor(s, random_dtype());
  }
  void keep(const Tensor& t) {
    if (t.numel() > 400) return;
    // Keep the pool's magnitudes small: no overflow in later integer products, few infinities.
    const Ref r = values_of(t);
    for (double x : r.v)
      if (!std::isfinite(x) || std::abs(x) > 1e3) return;
    if (pool.size() < 8) pool.push_back(t);
    else pool[pick(0, 7)] = t;
  }

  static std::string desc(const Tensor& t) {
    std::ostringstream o;
    o << dtype_name(t.dtype()) << shape_str(t.shape());
    if (!t.is_contiguous()) o << "(strided)";
    return o.str();
  }

  // Runs the kiln call and holds it to the reference's outcome.
  void check(const std::string& what, const std::function<Tensor()>& call, const Outcome& want) {
    log << what << "\n";
    Tensor got;
    std::string err;
    try {
      got = call();
    } catch (const Error& e) {
      err = e.what();
    }
    INFO(log.str());
    if (want.kind == Expect::Error) {
      CHECK_MESSAGE(!err.empty(), what << ": the reference rejects it (" << want.why << ") but kiln returned "
                                       << (got.defined() ? desc(got) : std::string("nothing")));
      if (!err.empty()) {
        CHECK_MESSAGE(err.front() == '[', what << ": the error does not name the op: " << err);
        ++stats->errors_expected;
      }
      return;
    }
    if (!err.empty()) {
      CHECK_MESSAGE(want.kind == Expect::ValueOrError, what << ": kiln refused a call the reference computes: " << err);
      ++stats->errors_allowed;
      if (std::getenv("KILN_FUZZ_SHOW_REFUSALS")) std::fprintf(stderr, "refused: %s: %s\n", what.c_str(), err.c_str());
      return;
    }
    ++stats->values;
    REQUIRE_MESSAGE(got.defined(), what);
    REQUIRE_MESSAGE(got.shape() == want.ref.shape,
                    what << ": shape " << shape_str(got.shape()) << ", reference " << shape_str(want.ref.shape));
    REQUIRE_MESSAGE(got.dtype() == want.ref.dtype,
                    what << ": dtype " << dtype_name(got.dtype()) << ", reference " << dtype_name(want.ref.dtype));
    compare(what, values_of(got), want);
    keep(got);
  }

  void compare(const std::string& what, const Ref& got, const Outcome& want) {
    const DType dt = want.ref.dtype;
    const double ulp2 = 2 * machine_eps(dt);
    int bad = 0;
    for (std::size_t i = 0; i < got.v.size() && bad < 3; ++i) {
      const double g = got.v[i], e = want.ref.v[i];
      const double slack = want.tol.empty() ? 0 : want.tol[i];
      bool ok;
      if (std::isnan(e) || std::isnan(g)) ok = std::isnan(e) && std::isnan(g);
      else if (std::isinf(e) || std::isinf(g)) {
        // At the edge of the range a value may round either way.
        const double finite = std::isinf(e) ? g : e;
        ok = g == e || (std::signbit(g) == std::signbit(e) && std::abs(finite) + slack >= max_finite(dt) * (1 - ulp2));
      } else ok = std::abs(g - e) <= ulp2 * std::abs(e) + slack + min_subnormal(dt);
      if (!ok) {
        ++bad;
        FAIL_CHECK(what << ": element " << i << " is " << g << ", reference " << e << " (slack " << slack << ")");
      }
    }
  }

  // ---- ops: each builds the reference outcome, then runs the kiln call ----
  void op_binary() {
    static const char* names[] = {"add", "sub", "mul", "div", "maximum", "minimum", "lt", "eq", "ge"};
    const int k = static_cast<int>(pick(0, 8));
    const std::string name = names[k];
    Tensor a = any(), b = partner(a);
    if (coin()) std::swap(a, b);
    const Ref ra = values_of(a), rb = values_of(b);
    const std::string what = name + "(" + desc(a) + ", " + desc(b) + ")";
    Outcome o;
    auto shape = broadcast_shapes(ra.shape, rb.shape);
    const DType common = result_type(ra, rb);
    const bool compare_op = k >= 6;
    if (!shape) o = error("shapes do not broadcast");
    else if (name == "sub" && (ra.dtype == kBool || rb.dtype == kBool)) o = error("bool subtraction");
    else {
      o.ref.shape = *shape;
      o.ref.dtype = compare_op ? kBool : (name == "div" && !floating(common)) ? kFloat32 : common;
      const DType compute = name == "div" && !floating(common) ? kFloat32 : common;
      o.ref.v.resize(count(*shape));
      for_each_index(*shape, [&](std::int64_t f, const std::vector<std::int64_t>& idx) {
        const double x = round_to(ra.v[bcast_flat(ra.shape, *shape, idx)], compute);
        const double y = round_to(rb.v[bcast_flat(rb.shape, *shape, idx)], compute);
        double r = 0;
        switch (k) {
          case 0: r = common == kBool ? double(x || y) : x + y; break;
          case 1: r = x - y; break;
          case 2: r = common == kBool ? double(x && y) : x * y; break;
          case 3: r = x / y; break;
          case 4: r = std::isnan(x) || std::isnan(y) ? NAN : std::max(x, y); break;
          case 5: r = std::isnan(x) || std::isnan(y) ? NAN : std::min(x, y); break;
          case 6: r = x < y; break;
          case 7: r = x == y; break;
          default: r = x >= y; break;
        }
        o.ref.v[f] = round_to(r, o.ref.dtype);
      });
    }
    check(
        what,
        [&] {
          switch (k) {
            case 0: return add(a, b);
            case 1: return sub(a, b);
            case 2: return mul(a, b);
            case 3: return div(a, b);
            case 4: return maximum(a, b);
            case 5: return minimum(a, b);
            case 6: return lt(a, b);
            case 7: return eq(a, b);
            default: return ge(a, b);
          }
        },
        o);
  }

  void op_where() {
    Tensor c = any(), a = partner(c), b = partner(c);
    if (coin(0.8)) c = gt(c.to(kFloat64), zeros({}, kFloat64));  // mostly a bool condition
    const Ref rc = values_of(c), ra = values_of(a), rb = values_of(b);
    const std::string what = "where(" + desc(c) + ", " + desc(a) + ", " + desc(b) + ")";
    Outcome o;
    auto s1 = broadcast_shapes(rc.shape, ra.shape);
    auto shape = s1 ? broadcast_shapes(*s1, rb.shape) : std::nullopt;
    if (rc.dtype != kBool) o = error("the condition is not bool");
    else if (!shape) o = error("shapes do not broadcast");
    else {
      o.ref.shape = *shape;
      o.ref.dtype = result_type(ra, rb);
      o.ref.v.resize(count(*shape));
      for_each_index(*shape, [&](std::int64_t f, const std::vector<std::int64_t>& idx) {
        const bool p = rc.v[bcast_flat(rc.shape, *shape, idx)] != 0;
        const double x = p ? ra.v[bcast_flat(ra.shape, *shape, idx)] : rb.v[bcast_flat(rb.shape, *shape, idx)];
        o.ref.v[f] = round_to(x, o.ref.dtype);
      });
    }
    check(
        what, [&] { return where(c, a, b); }, o);
  }

  void op_unary() {
    static const char* names[] = {"neg", "abs", "exp", "tanh", "sigmoid", "relu", "sqrt", "square", "logical_not"};
    const int k = static_cast<int>(pick(0, 8));
    const Tensor x = any();
    const Ref rx = values_of(x);
    const std::string what = std::string(names[k]) + "(" + desc(x) + ")";
    const bool transcendental = k == 2 || k == 3 || k == 4 || k == 6;
    Outcome o;
    o.ref.shape = rx.shape;
    if (k == 8) o.ref.dtype = kBool;
    else if (transcendental) o.ref.dtype = floating(rx.dtype) ? rx.dtype : kFloat32;
    else if (k == 7 && rx.dtype == kBool) o.ref.dtype = kInt64;  // square is pow(x, 2): bool -> int64
    else o.ref.dtype = rx.dtype;
    if (rx.dtype == kBool && (k == 0 || k == 5)) o = error("negation / relu of bool");
    else {
      // Integer inputs to the floating functions: PyTorch gives float32; refusing is allowed.
      if (transcendental && !floating(rx.dtype)) o.kind = Expect::ValueOrError;
      if (rx.dtype == kBool && k != 8) o.kind = Expect::ValueOrError;
      for (double v : rx.v) {
        double r = 0;
        switch (k) {
          case 0: r = -v; break;
          case 1: r = std::abs(v); break;
          case 2: r = std::exp(v); break;
          case 3: r = std::tanh(v); break;
          case 4: r = 1 / (1 + std::exp(-v)); break;
          case 5: r = v > 0 ? v : 0; break;
          case 6: r = std::sqrt(v); break;
          case 7: r = v * v; break;
          default: r = v == 0; break;
        }
        o.ref.v.push_back(round_to(r, o.ref.dtype));
        // Library functions in float32 / float64 are accurate to a few ulps.
        o.tol.push_back(transcendental ? 6 * machine_eps(o.ref.dtype) * std::abs(r) : 0);
      }
    }
    check(
        what,
        [&] {
          switch (k) {
            case 0: return neg(x);
            case 1: return abs(x);
            case 2: return exp(x);
            case 3: return tanh(x);
            case 4: return sigmoid(x);
            case 5: return relu(x);
            case 6: return sqrt(x);
            case 7: return square(x);
            default: return logical_not(x);
          }
        },
        o);
  }

  // Random dims for a reduction: usually valid, sometimes out of range or repeated.
  std::vector<std::int64_t> random_dims(std::int64_t nd) {
    std::vector<std::int64_t> dims;
    const std::int64_t n = pick(0, std::min<std::int64_t>(nd, 2));
    for (std::int64_t i = 0; i < n; ++i) dims.push_back(pick(-nd - (coin(0.1) ? 1 : 0), nd - 1 + (coin(0.1) ? 1 : 0)));
    if (nd == 0 && coin(0.3)) dims.push_back(pick(-1, 0));  // a 0-dim tensor takes dim 0 / -1
    return dims;
  }

  void op_reduce() {
    static const char* names[] = {"sum", "mean", "amax", "amin"};
    const int k = static_cast<int>(pick(0, 3));
    const Tensor x = any();
    const Ref rx = values_of(x);
    const std::int64_t nd = x.dim();
    const auto dims = random_dims(nd);
    const bool keepdim = coin();
    std::ostringstream w;
    w << names[k] << "(" << desc(x) << ", dims {";
    for (auto d : dims) w << d << ",";
    w << "}, keepdim " << keepdim << ")";
    const std::string what = w.str();

    Outcome o;
    // Normalize the dims; a 0-dim tensor accepts 0 and -1.
    std::vector<bool> reduced(nd, dims.empty());
    std::string bad;
    for (auto d : dims) {
      const std::int64_t lim = std::max<std::int64_t>(nd, 1);
      if (d < -lim || d >= lim) bad = "dim out of range";
      else if (nd > 0) {
        const std::int64_t n = d < 0 ? d + nd : d;
        if (reduced[n]) bad = "dim repeated";
        reduced[n] = true;
      }
    }
    std::int64_t len = 1;
    for (std::int64_t d = 0; d < nd; ++d)
      if (reduced[d]) len *= x.size(d);
    if (!bad.empty()) o = error(bad);
    else if (k == 1 && !floating(rx.dtype)) o = error("mean of a non-floating dtype");
    else if (k >= 2 && len == 0) o = error("amax/amin over no elements");
    else {
      o.ref.dtype = k == 0 && !floating(rx.dtype) ? kInt64 : rx.dtype;
      Shape out;
      for (std::int64_t d = 0; d < nd; ++d) {
        if (!reduced[d]) out.push_back(x.size(d));
        else if (keepdim) out.push_back(1);
      }
      o.ref.shape = out;
      const std::int64_t m = count(out);
      std::vector<double> acc(m, k == 2 ? -INFINITY : k == 3 ? INFINITY : 0), mag(m, 0);
      std::vector<bool> nan(m, false);
      // Map each input element to its output slot.
      const Shape ost = row_major_strides(out);
      for_each_index(rx.shape, [&](std::int64_t f, const std::vector<std::int64_t>& idx) {
        std::int64_t of = 0, od = 0;
        for (std::int64_t d = 0; d < nd; ++d) {
          if (!reduced[d]) of += idx[d] * ost[od++];
          else if (keepdim) od++;
        }
        const double v = rx.v[f];
        if (std::isnan(v)) nan[of] = true;
        if (k <= 1) acc[of] += v, mag[of] += std::abs(v);
        else if (k == 2) acc[of] = std::max(acc[of], v);
        else acc[of] = std::min(acc[of], v);
      });
      for (std::int64_t i = 0; i < m; ++i) {
        double r = nan[i] && k >= 2 ? NAN : acc[i];
        double slack = (len + 2) * acc_eps(rx.dtype) * mag[i];
        if (k == 1) r /= static_cast<double>(len), slack /= static_cast<double>(std::max<std::int64_t>(len, 1));
        o.ref.v.push_back(round_to(r, o.ref.dtype));
        o.tol.push_back(floating(o.ref.dtype) ? slack : 0);
      }
    }
    check(
        what,
        [&] {
          switch (k) {
            case 0: return sum(x, dims, keepdim);
            case 1: return mean(x, dims, keepdim);
            case 2: return amax(x, dims, keepdim);
            default: return amin(x, dims, keepdim);
          }
        },
        o);
  }

  void op_softmax() {
    const bool log_form = coin();
    const Tensor x = any();
    const Ref rx = values_of(x);
    const std::int64_t nd = x.dim(), lim = std::max<std::int64_t>(nd, 1);
    const std::int64_t dim = pick(-lim - (coin(0.1) ? 1 : 0), lim - 1 + (coin(0.1) ? 1 : 0));
    const std::string what =
        std::string(log_form ? "log_softmax(" : "softmax(") + desc(x) + ", " + std::to_string(dim) + ")";
    Outcome o;
    if (dim < -lim || dim >= lim) o = error("dim out of range");
    else {
      // PyTorch computes integer input in float32 (kiln may refuse it).
      o.ref.dtype = floating(rx.dtype) ? rx.dtype : kFloat32;
      if (!floating(rx.dtype)) o.kind = Expect::ValueOrError;
      o.ref.shape = rx.shape;
      o.ref.v.resize(rx.v.size());
      o.tol.resize(rx.v.size());
      const std::int64_t d = nd == 0 ? 0 : (dim < 0 ? dim + nd : dim);
      const std::int64_t n = nd == 0 ? 1 : x.size(d);
      std::int64_t outer = 1, inner = 1;
      for (std::int64_t i = 0; i < nd; ++i) (i < d ? outer : inner) *= i == d ? 1 : rx.shape[i];
      for (std::int64_t a = 0; a < outer; ++a)
        for (std::int64_t c = 0; c < inner; ++c) {
          auto at = [&](std::int64_t j) { return a * n * inner + j * inner + c; };
          double mx = -INFINITY, s = 0;
          for (std::int64_t j = 0; j < n; ++j) mx = std::max(mx, rx.v[at(j)]);
          for (std::int64_t j = 0; j < n; ++j) s += std::exp(rx.v[at(j)] - mx);
          for (std::int64_t j = 0; j < n; ++j) {
            const double z = rx.v[at(j)] - mx;
            const double r = log_form ? z - std::log(s) : std::exp(z) / s;
            o.ref.v[at(j)] = round_to(r, o.ref.dtype);
            o.tol[at(j)] = 8 * (n + 2) * acc_eps(o.ref.dtype) * (1 + std::abs(z) + std::abs(std::log(s)));
          }
        }
    }
    check(
        what, [&] { return log_form ? log_softmax(x, dim) : softmax(x, dim); }, o);
  }

  void op_matmul() {
    // Shapes that usually multiply: a is (..., M, K) or (K,), b is (..., K, N) or (K,).
    static const std::int64_t sizes[] = {0, 1, 2, 3, 5};
    const std::int64_t K = sizes[pick(0, 4)], M = sizes[pick(0, 4)], N = sizes[pick(0, 4)];
    auto make = [&](bool left) {
      const std::int64_t nd = pick(1, 3);
      Shape s;
      for (std::int64_t i = 0; i + 2 < nd; ++i) s.push_back(coin() ? 1 : 2);
      if (nd == 1) s = {K};
      else if (left) s.push_back(M), s.push_back(K);
      else s.push_back(K), s.push_back(N);
      if (coin(0.1)) s.back() += 1;  // may not multiply
      static const DType types[] = {kFloat32, kFloat32, kFloat64, kBFloat16, kFloat16, kInt64};
      const DType d = coin(0.8) ? kFloat32 : types[pick(0, 5)];
      return random_tensor(s, d);
    };
    Tensor a = make(true), b = make(false);
    if (coin(0.3) && a.dim() >= 2) a = a.mT().contiguous().mT();  // column-major operands
    if (coin(0.3) && b.dim() >= 2) b = b.mT().contiguous().mT();
    const Ref ra = values_of(a), rb = values_of(b);
    const std::string what = "matmul(" + desc(a) + ", " + desc(b) + ")";
    Outcome o;
    // Promote 1-D operands as PyTorch does, then batch-broadcast.
    Shape sa = ra.shape, sb = rb.shape;
    const bool va = sa.size() == 1, vb = sb.size() == 1;
    if (va) sa.insert(sa.begin(), 1);
    if (vb) sb.push_back(1);
    const std::int64_t m = sa[sa.size() - 2], ka = sa.back(), kb = sb[sb.size() - 2], n = sb.back();
    auto batch = broadcast_shapes(Shape(sa.begin(), sa.end() - 2), Shape(sb.begin(), sb.end() - 2));
    if (ka != kb) o = error("inner sizes differ");
    else if (!batch) o = error("batch dims do not broadcast");
    else {
      const DType dt = promote(ra.dtype, rb.dtype);
      o.ref.dtype = dt;
      // PyTorch refuses mixed dtypes; kiln may promote instead. Integer matmul may be refused.
      if (ra.dtype != rb.dtype || !floating(dt)) o.kind = Expect::ValueOrError;
      Shape full = *batch;
      full.push_back(m);
      full.push_back(n);
      Shape out = *batch;
      if (!va) out.push_back(m);
      if (!vb) out.push_back(n);
      o.ref.shape = out;
      const Shape ba(sa.begin(), sa.end() - 2), bb(sb.begin(), sb.end() - 2);
      for_each_index(full, [&](std::int64_t, const std::vector<std::int64_t>& idx) {
        const std::vector<std::int64_t> bidx(idx.begin(), idx.end() - 2);
        const std::int64_t oa = batch->empty() ? 0 : bcast_flat(ba, *batch, bidx) * m * ka;
        const std::int64_t ob = batch->empty() ? 0 : bcast_flat(bb, *batch, bidx) * kb * n;
        const std::int64_t i = idx[idx.size() - 2], j = idx.back();
        double s = 0, mag = 0;
        for (std::int64_t k = 0; k < ka; ++k) {
          const double p = ra.v[oa + i * ka + k] * rb.v[ob + k * n + j];
          s += p, mag += std::abs(p);
        }
        o.ref.v.push_back(round_to(s, dt));
        o.tol.push_back(floating(dt) ? (ka + 2) * acc_eps(dt) * mag : 0);
      });
    }
    check(
        what, [&] { return matmul(a, b); }, o);
  }

  // A random view of x and, in the reference, the flat index (into x's row-major values) of each
  // of its elements; nullopt with a reason when the arguments are invalid.
  struct View {
    std::function<Tensor(const Tensor&)> make;
    std::string what;
    std::optional<Shape> shape;
    std::vector<std::int64_t> src;  // flat source index per element
    std::string bad;
  };
  View random_view(const Tensor& x) {
    View v;
    const Shape s = x.shape();
    const std::int64_t nd = x.dim();
    const Shape st = row_major_strides(s);
    const int k = static_cast<int>(pick(0, 6));
    auto gather = [&](const Shape& out, auto&& map) {  // map(out index) -> source multi-index
      v.shape = out;
      for_each_index(out, [&](std::int64_t, const std::vector<std::int64_t>& idx) {
        const std::vector<std::int64_t> si = map(idx);
        std::int64_t f = 0;
        for (std::int64_t d = 0; d < nd; ++d) f += si[d] * st[d];
        v.src.push_back(f);
      });
    };
    auto norm = [&](std::int64_t d, std::int64_t n) -> std::optional<std::int64_t> {
      const std::int64_t lim = std::max<std::int64_t>(n, 1);
      if (d < -lim || d >= lim) return std::nullopt;
      return d < 0 ? d + n : d;
    };
    auto some_dim = [&](std::int64_t n) { return pick(-n - (coin(0.1) ? 1 : 0), n - 1 + (coin(0.1) ? 1 : 0)); };
    if (k == 0 && nd >= 1) {  // transpose
      const std::int64_t d0 = some_dim(nd), d1 = some_dim(nd);
      v.what = "transpose(" + std::to_string(d0) + "," + std::to_string(d1) + ")";
      v.make = [=](const Tensor& t) { return t.transpose(d0, d1); };
      auto a = norm(d0, nd), b = norm(d1, nd);
      if (!a || !b) v.bad = "dim out of range";
      else {
        Shape out = s;
        std::swap(out[*a], out[*b]);
        gather(out, [&](std::vector<std::int64_t> i) { return std::swap(i[*a], i[*b]), i; });
      }
    } else if (k == 1 && nd >= 1) {  // strided slice, bounds clamped as in Python
      const std::int64_t d = pick(0, nd - 1), n = s[d];
      std::int64_t start = pick(-n - 1, n + 1), end = pick(-n - 1, n + 1), step = pick(coin(0.1) ? 0 : 1, 3);
      v.what = "slice(" + std::to_string(d) + "," + std::to_string(start) + "," + std::to_string(end) + "," +
               std::to_string(step) + ")";
      v.make = [=](const Tensor& t) { return t.slice(d, start, end, step); };
      if (step <= 0) v.bad = "step must be positive";
      else {
        auto clampi = [&](std::int64_t i) { return std::clamp<std::int64_t>(i < 0 ? i + n : i, 0, n); };
        const std::int64_t b = clampi(start), e = std::max(clampi(end), b);
        Shape out = s;
        out[d] = (e - b + step - 1) / step;
        gather(out, [&](std::vector<std::int64_t> i) { return i[d] = b + i[d] * step, i; });
      }
    } else if (k == 2 && nd >= 1) {  // select
      const std::int64_t d = pick(0, nd - 1), n = s[d], index = pick(-n - 1, n);
      v.what = "select(" + std::to_string(d) + "," + std::to_string(index) + ")";
      v.make = [=](const Tensor& t) { return t.select(d, index); };
      if (index < -n || index >= n) v.bad = "index out of range";
      else {
        Shape out = s;
        out.erase(out.begin() + d);
        gather(out,
               [&](std::vector<std::int64_t> i) { return i.insert(i.begin() + d, index < 0 ? index + n : index), i; });
      }
    } else if (k == 3) {  // unsqueeze
      const std::int64_t d = pick(-nd - 1 - (coin(0.1) ? 1 : 0), nd + (coin(0.1) ? 1 : 0));
      v.what = "unsqueeze(" + std::to_string(d) + ")";
      v.make = [=](const Tensor& t) { return t.unsqueeze(d); };
      if (d < -nd - 1 || d > nd) v.bad = "dim out of range";
      else {
        const std::int64_t p = d < 0 ? d + nd + 1 : d;
        Shape out = s;
        out.insert(out.begin() + p, 1);
        gather(out, [&](std::vector<std::int64_t> i) { return i.erase(i.begin() + p), i; });
      }
    } else if (k == 4) {  // expand: size-1 dims grow, sometimes a new leading dim, sometimes invalid
      Shape out = s;
      for (auto& d : out)
        if (d == 1 && coin()) d = pick(0, 3);
      if (coin(0.3)) out.insert(out.begin(), pick(0, 2));
      if (coin(0.1) && !out.empty()) out.back() += 1;
      v.what = "expand(" + shape_str(out) + ")";
      v.make = [=](const Tensor& t) { return t.expand(out); };
      const std::size_t lead = out.size() - s.size();
      bool ok = out.size() >= s.size();
      for (std::size_t d = 0; ok && d < s.size(); ++d) ok = s[d] == out[lead + d] || s[d] == 1;
      if (!ok) v.bad = "shape does not expand";
      else
        gather(out, [&](const std::vector<std::int64_t>& i) {
          std::vector<std::int64_t> si(i.begin() + lead, i.end());
          for (std::int64_t d = 0; d < nd; ++d)
            if (s[d] == 1) si[d] = 0;
          return si;
        });
    } else if (k == 5 && nd >= 1) {  // permute
      std::vector<std::int64_t> perm(nd);
      for (std::int64_t i = 0; i < nd; ++i) perm[i] = i;
      std::shuffle(perm.begin(), perm.end(), rng);
      if (coin(0.1)) perm[0] = perm.back();  // repeated: invalid unless nd == 1
      v.what = "permute";
      v.make = [=](const Tensor& t) { return t.permute(perm); };
      std::vector<bool> seen(nd, false);
      for (auto p : perm) {
        if (seen[p]) v.bad = "permutation repeats a dim";
        seen[p] = true;
      }
      if (v.bad.empty()) {
        Shape out(nd);
        for (std::int64_t i = 0; i < nd; ++i) out[i] = s[perm[i]];
        gather(out, [&](const std::vector<std::int64_t>& i) {
          std::vector<std::int64_t> si(nd);
          for (std::int64_t d = 0; d < nd; ++d) si[perm[d]] = i[d];
          return si;
        });
      }
    } else {  // reshape to a random factorization (a view or a copy; values in row-major order)
      const std::int64_t n = count(s);
      Shape out;
      std::int64_t rest = n;
      for (int i = 0; i < 3 && rest > 1; ++i) {
        std::int64_t f = 1;
        for (std::int64_t c = 2; c <= rest; ++c)
          if (rest % c == 0 && coin()) f = c;
        out.push_back(f), rest /= f;
      }
      out.push_back(rest);
      if (n == 0) out = {0, pick(0, 3)};
      if (coin(0.1)) out.back() += 1;
      if (coin(0.2)) out[pick(0, static_cast<std::int64_t>(out.size()) - 1)] = -1;
      v.what = "reshape(" + shape_str(out) + ")";
      v.make = [=](const Tensor& t) { return t.reshape(out); };
      std::int64_t known = 1, infer = 0;
      for (auto d : out) d == -1 ? ++infer : known *= d;
      Shape res = out;
      if (infer == 1 && known != 0 && n % known == 0)
        for (auto& d : res) d = d == -1 ? n / known : d;
      if (infer > 1 || (infer == 1 && (known == 0 || n % known != 0)) || (infer == 0 && known != n))
        v.bad = "element count differs";
      else
        gather(res, [&](const std::vector<std::int64_t>& i) {
          std::int64_t f = 0;
          const Shape rst = row_major_strides(res);
          for (std::size_t d = 0; d < i.size(); ++d) f += i[d] * rst[d];
          std::vector<std::int64_t> si(nd);
          for (std::int64_t d = 0; d < nd; ++d) si[d] = s[d] == 0 ? 0 : (f / st[d]) % s[d];
          return si;
        });
    }
    if (!v.make) {  // no dims to act on: contiguous()
      v.what = "contiguous()";
      v.make = [](const Tensor& t) { return t.contiguous(); };
      gather(s, [](const std::vector<std::int64_t>& i) { return i; });
    }
    return v;
  }

  void op_view() {
    const Tensor x = any();
    const Ref rx = values_of(x);
    View v = random_view(x);
    const std::string what = desc(x) + "." + v.what;
    Outcome o;
    if (!v.bad.empty()) o = error(v.bad);
    else {
      o.ref.shape = *v.shape;
      o.ref.dtype = rx.dtype;
      for (auto f : v.src) o.ref.v.push_back(rx.v[f]);
    }
    check(
        what, [&] { return v.make(x); }, o);
  }

  // In place through a view: y = x.clone(); view(y).op_(other); the reference applies the op to
  // y's elements that the view reaches.
  void op_inplace() {
    const Tensor x = any();
    Tensor y = x.clone().contiguous();  // owns its storage; every view below aliases it
    const Ref ry = values_of(y);
    View v = random_view(y);
    if (!v.bad.empty()) return;
    Tensor target = v.make(y);
    const Tensor other = partner(target);
    const Ref ro = values_of(other);
    const int k = static_cast<int>(pick(0, 2));
    static const char* names[] = {"add_", "mul_", "copy_"};
    const std::string what = desc(y) + "." + v.what + "." + names[k] + "(" + desc(other) + ")";
    Outcome o;
    std::vector<std::int64_t> seen(v.src);
    std::sort(seen.begin(), seen.end());
    const bool overlap = std::adjacent_find(seen.begin(), seen.end()) != seen.end();
    auto shape = broadcast_shapes(*v.shape, ro.shape);
    if (overlap) o = error("the view writes one element twice");
    else if (!shape || *shape != *v.shape) o = error("the operand does not broadcast to the view");
    else if (k != 2 && category(result_type(Ref{*v.shape, ry.dtype, {}}, ro)) > category(ry.dtype))
      o = error("the result cannot be stored in the target's dtype");
    else if (k == 0 && ry.dtype == kBool && ro.dtype == kBool) o.kind = Expect::ValueOrError;
    if (o.kind != Expect::Error) {
      o.ref = ry;
      for_each_index(*v.shape, [&](std::int64_t f, const std::vector<std::int64_t>& idx) {
        const double b = ro.v[bcast_flat(ro.shape, *v.shape, idx)];
        double& a = o.ref.v[v.src[f]];
        const DType c = result_type(Ref{*v.shape, ry.dtype, {}}, ro);
        const double xa = round_to(a, c), xb = round_to(b, c);
        const double r = k == 0   ? (c == kBool ? double(xa || xb) : xa + xb)
                         : k == 1 ? (c == kBool ? double(xa && xb) : xa * xb)
                                  : b;
        a = round_to(r, ry.dtype);
      });
    }
    check(
        what,
        [&] {
          switch (k) {
            case 0: target.add_(other); break;
            case 1: target.mul_(other); break;
            default: target.copy_(other); break;
          }
          return y;
        },
        o);
  }

  void op_cat() {
    Tensor a = any();
    Tensor b = coin(0.7) ? random_tensor(a.shape(), random_dtype()) : any();
    const std::int64_t nd = a.dim();
    std::int64_t dim = nd == 0 ? 0 : pick(-nd, nd - 1 + (coin(0.1) ? 1 : 0));
    if (nd > 0 && dim >= -nd && dim < nd && b.dim() == nd) {  // vary the cat dim's size of b
      Shape s = b.shape();
      s[dim < 0 ? dim + nd : dim] = pick(0, 3);
      b = random_tensor(s, b.dtype());
    }
    // PyTorch's legacy rule skips 1-D empty tensors of shape (0,) beside any rank: not fuzzed.
    if (a.dim() != b.dim() && (a.shape() == Shape{0} || b.shape() == Shape{0})) return;
    const Ref ra = values_of(a), rb = values_of(b);
    const std::string what = "cat(" + desc(a) + ", " + desc(b) + ", " + std::to_string(dim) + ")";
    Outcome o;
    if (nd == 0 || b.dim() == 0) o = error("zero-dimensional tensors cannot be concatenated");
    else if (b.dim() != nd) o = error("ranks differ");
    else if (dim < -nd || dim >= nd) o = error("dim out of range");
    else {
      const std::int64_t d = dim < 0 ? dim + nd : dim;
      bool ok = true;
      for (std::int64_t i = 0; i < nd; ++i) ok = ok && (i == d || a.size(i) == b.size(i));
      if (!ok) o = error("sizes differ outside the cat dim");
      else {
        o.ref.dtype = promote(ra.dtype, rb.dtype);
        Shape out = ra.shape;
        out[d] += rb.shape[d];
        o.ref.shape = out;
        const Shape sta = row_major_strides(ra.shape), stb = row_major_strides(rb.shape);
        for_each_index(out, [&](std::int64_t, const std::vector<std::int64_t>& idx) {
          const bool first = idx[d] < ra.shape[d];
          std::int64_t f = 0;
          for (std::int64_t i = 0; i < nd; ++i)
            f += (i == d && !first ? idx[i] - ra.shape[d] : idx[i]) * (first ? sta[i] : stb[i]);
          o.ref.v.push_back(round_to(first ? ra.v[f] : rb.v[f], o.ref.dtype));
        });
      }
    }
    check(
        what,
        [&] {
          return cat({a, b}, dim);
        },
        o);
  }

  void op_index_select() {
    const Tensor x = any();
    if (x.dim() == 0) return;
    const Ref rx = values_of(x);
    const std::int64_t nd = x.dim();
    const std::int64_t dim = pick(0, nd - 1);
    const std::int64_t n = x.size(dim);
    std::vector<std::int64_t> idx(pick(0, 4));
    for (auto& i : idx) i = coin(0.1) ? pick(-2, n + 1) : pick(0, std::max<std::int64_t>(n - 1, 0));
    const DType index_dtype = coin(0.9) ? kInt64 : (coin() ? kFloat32 : kBool);
    const Tensor index = tensor(idx, {static_cast<std::int64_t>(idx.size())}).to(index_dtype);
    std::ostringstream w;
    w << "index_select(" << desc(x) << ", " << dim << ", " << dtype_name(index_dtype) << " {";
    for (auto i : idx) w << i << ",";
    w << "})";
    Outcome o;
    bool in_range = true;
    for (auto i : idx) in_range = in_range && i >= 0 && i < n;
    // index_select takes indices in [0, n) only (as PyTorch's).
    if (index_dtype != kInt64) o = error("the index is not int64");
    else if (!in_range) o = error("index out of range");
    else {
      o.ref.dtype = rx.dtype;
      Shape out = rx.shape;
      out[dim] = static_cast<std::int64_t>(idx.size());
      o.ref.shape = out;
      const Shape st = row_major_strides(rx.shape);
      for_each_index(out, [&](std::int64_t, const std::vector<std::int64_t>& i) {
        std::int64_t f = 0;
        for (std::int64_t d = 0; d < nd; ++d) f += (d == dim ? idx[i[d]] : i[d]) * st[d];
        o.ref.v.push_back(rx.v[f]);
      });
    }
    check(
        w.str(), [&] { return index_select(x, dim, index); }, o);
  }

  void op_to() {
    const Tensor x = any();
    const DType d = random_dtype();
    Ref rx = values_of(x);
    Outcome o;
    o.ref = rx;
    o.ref.dtype = d;
    for (auto& v : o.ref.v) v = round_to(v, d);
    check(
        desc(x) + ".to(" + std::string(dtype_name(d)) + ")", [&] { return x.to(d); }, o);
  }

  void run(int steps) {
    for (int i = 0; i < 3; ++i) pool.push_back(random_tensor(random_shape(), random_dtype()));
    for (int i = 0; i < steps; ++i) {
      switch (pick(0, 12)) {
        case 0: pool.push_back(random_tensor(random_shape(), random_dtype())); break;
        case 1:
        case 2: op_binary(); break;
        case 3: op_where(); break;
        case 4: op_unary(); break;
        case 5: op_reduce(); break;
        case 6: op_softmax(); break;
        case 7: op_matmul(); break;
        case 8:
        case 9: op_view(); break;
        case 10: op_inplace(); break;
        case 11: coin() ? op_cat() : op_index_select(); break;
        default: op_to(); break;
      }
      if (pool.size() > 8) pool.erase(pool.begin());
    }
  }
};

}  // namespace

TEST_CASE("stress api fuzz: 300 seeded op sequences give kiln::Error or the float64 reference's result") {
  Stats stats;
  for (std::uint64_t seed = 1; seed <= 300; ++seed) {
    Fuzzer f(seed * 0x9E3779B97F4A7C15ull, &stats);
    f.log << "seed " << seed << "\n";
    f.run(40);
  }
  MESSAGE("api fuzz: " << stats.values << " results checked, " << stats.errors_expected << " required errors, "
                       << stats.errors_allowed << " allowed refusals");
  // A fuzzer where nearly everything errors would check nothing.
  CHECK(stats.values > 5000);
  CHECK(stats.errors_expected > 300);
}

#pragma once
/// kiln — a C++20 deep-learning framework. One include for everything:
///   #include <kiln/kiln.hpp>
#include "core/allocator.hpp"
#include "core/backend.hpp"
#include "core/device.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/format.hpp"
#include "core/generator.hpp"
#include "core/parallel.hpp"
#include "core/scalar.hpp"
#include "core/shape.hpp"
#include "core/tensor.hpp"
#include "autograd/function.hpp"
#include "autograd/grad_mode.hpp"
#include "autograd/gradcheck.hpp"
#include "autograd/node.hpp"
#include "autograd/ops.hpp"

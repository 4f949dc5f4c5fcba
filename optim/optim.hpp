#pragma once
/// Everything in kiln::optim: optimizers, learning-rate schedules, gradient clipping, and
/// kiln::amp::GradScaler (float16 loss scaling).
/// (Checkpoints and safetensors files are in io/: <kiln/io/io.hpp>.)
///   #include <kiln/optim/optim.hpp>
///   kiln::optim::AdamW opt(net->parameters(), kiln::optim::AdamWOptions(3e-4));
///   kiln::optim::WarmupCosineLR sched(opt, 100, 2000);
#include "adagrad.hpp"
#include "adam.hpp"
#include "clip.hpp"
#include "fused.hpp"
#include "grad_scaler.hpp"
#include "lion.hpp"
#include "optimizer.hpp"
#include "rmsprop.hpp"
#include "scheduler.hpp"
#include "scheduler_plateau.hpp"
#include "sgd.hpp"

#pragma once
/// Everything in kiln::optim: optimizers, learning-rate schedules, gradient clipping.
///   #include <kiln/optim/optim.hpp>
///   kiln::optim::AdamW opt(net->parameters(), kiln::optim::AdamWOptions(3e-4));
///   kiln::optim::WarmupCosineLR sched(opt, 100, 2000);
#include "adagrad.hpp"
#include "adam.hpp"
#include "checkpoint.hpp"
#include "clip.hpp"
#include "lion.hpp"
#include "optimizer.hpp"
#include "rmsprop.hpp"
#include "safetensors.hpp"
#include "scheduler.hpp"
#include "scheduler_plateau.hpp"
#include "sgd.hpp"
#include "state_dict.hpp"

#pragma once
/// kiln::nn — modules, initializers, layers and their functional forms. One include:
///   #include <kiln/nn/nn.hpp>   (also pulled in by <kiln/kiln.hpp>)
///   nn::Sequential mlp(nn::Linear(4, 16), nn::GELU(), nn::Linear(16, 2));
///   fmt::print("{}\n", mlp);
#include "activation.hpp"
#include "any_module.hpp"
#include "attention.hpp"
#include "container.hpp"
#include "dropout.hpp"
#include "embedding.hpp"
#include "feedforward.hpp"
#include "functional.hpp"
#include "gradcheck.hpp"
#include "init.hpp"
#include "kv_cache.hpp"
#include "linear.hpp"
#include "module.hpp"
#include "multihead_attention.hpp"
#include "normalization.hpp"
#include "ordered_dict.hpp"
#include "positional.hpp"
#include "rotary.hpp"
#include "transformer.hpp"

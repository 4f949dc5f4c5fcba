#pragma once
/// Everything in kiln::io: safetensors files, module files (nn::save / nn::load) and training
/// checkpoints. The serialization layer: above nn/ and optim/, which know nothing of files.
///   #include <kiln/io/io.hpp>
///   kiln::nn::save(*model, "model.safetensors");
///   kiln::io::save_checkpoint("ckpt.safetensors", {.model = model, .optimizer = opt}, step);
#include "checkpoint.hpp"
#include "safetensors.hpp"

#pragma once
/// Everything in kiln::io: safetensors files, module files (nn::save / nn::load), training
/// checkpoints, and run logs (MetricsLog CSV files, TensorBoard event files, PNG charts, Progress).
/// The serialization layer: above nn/ and optim/, which know nothing of files.
///   #include <kiln/io/io.hpp>
///   kiln::nn::save(*model, "model.safetensors");
///   kiln::io::save_checkpoint("ckpt.safetensors", {.model = model, .optimizer = opt}, step);
#include "chart.hpp"
#include "checkpoint.hpp"
#include "metrics_log.hpp"
#include "progress.hpp"
#include "safetensors.hpp"
#include "summary_writer.hpp"

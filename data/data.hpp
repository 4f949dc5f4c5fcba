#pragma once
/// kiln::data: datasets, samplers and the DataLoader. One include:
///   #include <kiln/data/data.hpp>
#include "dataset.hpp"
#include "datasets.hpp"
#include "loader.hpp"
#include "sampler.hpp"

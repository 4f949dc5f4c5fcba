#pragma once
#include "cuda_runtime_api.h"
#include "emu_core.hpp"
#ifndef INFINITY
#define INFINITY (__builtin_inff())
#endif

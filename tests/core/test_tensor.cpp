#include "test_util.hpp"
TEST_CASE("placeholder") {}

# Labels every discovered doctest case with the tests/ folder its source file sits in
# (`ctest -L nn`, `ctest -L core`, ...), and also with `cuda` when its name mentions CUDA.
# Runs after each build of the test binary (a POST_BUILD step next to doctest_discover_tests)
# and writes a CTest script that TEST_INCLUDE_FILES reads after the discovered tests.
#   cmake -D TEST_EXECUTABLE=<kiln_tests> -D CTEST_FILE=<out.cmake> -P kiln_test_labels.cmake
execute_process(
  COMMAND "${TEST_EXECUTABLE}" --list-test-cases --reporters=xml
  OUTPUT_VARIABLE xml
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "listing the test cases of ${TEST_EXECUTABLE} failed (${rc}):\n${xml}")
endif()

# doctest's XML listing: <TestCase name="..." [testsuite="..."] filename="..." line=.../>
# Semicolons (in XML entities, or in names) would split CMake lists: hidden while parsing.
string(REPLACE ";" "@SEMI@" xml "${xml}")
string(REGEX MATCHALL "<TestCase name=\"[^\"]*\"[^>]* filename=\"[^\"]*\"" cases "${xml}")
set(script "")
set(count 0)
foreach(case IN LISTS cases)
  string(REGEX REPLACE "^<TestCase name=\"([^\"]*)\".*$" "\\1" name "${case}")
  string(REGEX REPLACE "^.* filename=\"([^\"]*)\"$" "\\1" file "${case}")
  string(REPLACE "&quot@SEMI@" "\"" name "${name}")
  string(REPLACE "&apos@SEMI@" "'" name "${name}")
  string(REPLACE "&lt@SEMI@" "<" name "${name}")
  string(REPLACE "&gt@SEMI@" ">" name "${name}")
  string(REPLACE "&amp@SEMI@" "&" name "${name}")
  if(name MATCHES "@SEMI@")  # doctest_discover_tests would split it into tests that run nothing
    string(REPLACE "@SEMI@" ";" name "${name}")
    message(FATAL_ERROR "test case \"${name}\" ${file}: a test case name must not contain ';'")
  endif()
  string(REPLACE "\\" "/" file "${file}")
  string(REGEX REPLACE "^.*/([^/]+)/[^/]+$" "\\1" folder "${file}")
  set(labels "${folder}")
  string(TOLOWER "${name}" lower)
  if(NOT folder STREQUAL "cuda" AND lower MATCHES "cuda")
    list(APPEND labels cuda)
  endif()
  string(APPEND script "set_tests_properties([==[${name}]==] PROPERTIES LABELS \"${labels}\")\n")
  math(EXPR count "${count} + 1")
endforeach()
if(count EQUAL 0)
  message(FATAL_ERROR "no test cases found in the XML listing of ${TEST_EXECUTABLE}:\n${xml}")
endif()
file(WRITE "${CTEST_FILE}" "${script}")

# cmake -D MPIRUN="mpirun;flags" -D EXE=kiln_mpi_tests -D MODE=throw|kill|exit|guard|finalize -P mpi_fault.cmake
# Runs the job with 3 ranks, rank 1 misbehaving (tests/distributed/mpi_tests.cc): mpirun must exit
# non-zero within kLimit seconds. A hang is the failure this guards against.
set(kLimit 30)
string(TIMESTAMP t0 "%s")
execute_process(COMMAND ${MPIRUN} -np 3 ${EXE} --fault=${MODE}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT ${kLimit})
string(TIMESTAMP t1 "%s")
math(EXPR dt "${t1} - ${t0}")
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "fault '${MODE}': mpirun did not end within ${kLimit} s (${rc})\n${out}\n${err}")
endif()
if(rc EQUAL 0)
  message(FATAL_ERROR "fault '${MODE}': mpirun exited 0 after ${dt} s\n${out}\n${err}")
endif()
if(err MATCHES "the all_reduce returned although")
  message(FATAL_ERROR "fault '${MODE}': a rank left the all_reduce without rank 1\n${err}")
endif()
if(MODE STREQUAL "throw" AND NOT err MATCHES "rank 1 terminating on an uncaught exception: rank 1 fails on purpose")
  message(FATAL_ERROR "fault 'throw': the terminate handler did not report the exception\n${err}")
endif()
if(MODE STREQUAL "guard" AND NOT err MATCHES "rank 1 leaves on an exception; aborting the job")
  message(FATAL_ERROR "fault 'guard': InitGuard did not abort the job\n${err}")
endif()
# Rank 1's own report or a waiting rank's (whichever rank aborts first may kill the other before
# it prints): either names rank 1 in finalize while the others are in the all_reduce.
if(MODE STREQUAL "finalize" AND NOT err MATCHES "the ranks disagree: rank 0: all_reduce\\(sum\\)[^\n]*; rank 1: finalize")
  message(FATAL_ERROR "fault 'finalize': finalize did not detect the ranks waiting in a collective\n${err}")
endif()
message(STATUS "fault '${MODE}': mpirun exited ${rc} after ${dt} s")

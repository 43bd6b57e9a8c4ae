# Bounded soak test, ranks as threads in one process: a minute of save/load
# cycles under random injected faults (apps/soak.cpp). The program empties
# its root at start (it only ever holds step directories of an earlier soak)
# and prints its seed, so a failure replays with --seed.
add_test(NAME soak.threads
         COMMAND $<TARGET_FILE:dcpp-soak>
                 --root ${CMAKE_CURRENT_BINARY_DIR}/scratch/soak_threads
                 --seconds 60)
set_tests_properties(soak.threads PROPERTIES TIMEOUT 240)
dcpp_test_labels(soak.threads LABELS soak)

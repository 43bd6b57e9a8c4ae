# Bounded soak tests, ranks as threads in one process: a minute of save/load
# cycles under random injected faults (apps/soak.cpp). The program empties
# its root at start (it only ever holds step directories of an earlier soak)
# and prints its seed, so a failure replays with --seed.
add_test(NAME soak.threads
         COMMAND $<TARGET_FILE:dcpp-soak>
                 --root ${CMAKE_CURRENT_BINARY_DIR}/scratch/soak_threads
                 --seconds 60)
set_tests_properties(soak.threads PROPERTIES TIMEOUT 240)
dcpp_test_labels(soak.threads LABELS soak)

# The same over the ZeroMQ transport with CURVE on: every rank its own
# process group, connected over loopback with keys from the run's secret.
add_test(NAME soak.zmq
         COMMAND $<TARGET_FILE:dcpp-soak>
                 --root ${CMAKE_CURRENT_BINARY_DIR}/scratch/soak_zmq
                 --transport zmq --seconds 45)
set_tests_properties(soak.zmq PROPERTIES TIMEOUT 240)
dcpp_test_labels(soak.zmq LABELS soak)

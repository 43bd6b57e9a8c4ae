# Rank processes under random injected faults and random kill -9 for a
# bounded time (soak_processes.sh): every cycle's newest committed step
# loads and verifies.
add_test(NAME soak.processes
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/soak_processes.sh
                 $<TARGET_FILE_DIR:dcpp-worker>
                 ${CMAKE_CURRENT_BINARY_DIR}/scratch/soak_processes 60)
set_tests_properties(soak.processes PROPERTIES TIMEOUT 240)
dcpp_test_labels(soak.processes LABELS soak)

# kill -9 of rank processes and of the coordinator (in rank 0 and as a
# dcpp-coordinator process) at named steps: the survivors must exit on their
# own through the heartbeat, the previous commit stays byte-identical and
# loadable, and the next save cleans up the leftovers. See kill_test.sh.
add_test(NAME fault.kill9_worker_and_coordinator
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/kill_test.sh
                 $<TARGET_FILE_DIR:dcpp-worker>)
set_tests_properties(fault.kill9_worker_and_coordinator PROPERTIES
                     TIMEOUT 180)
dcpp_test_labels(fault.kill9_worker_and_coordinator LABELS e2e)

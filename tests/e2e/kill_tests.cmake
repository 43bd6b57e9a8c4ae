# (filled in by the kill_tests work)

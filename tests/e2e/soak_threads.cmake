# (filled in by the soak_threads work)

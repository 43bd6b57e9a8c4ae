# (filled in by the soak_processes work)

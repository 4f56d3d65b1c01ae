"""Running the fleet on one machine: the embedded PostgreSQL and Redis under $INTAKE_HOME (`services`), the
URLs a process uses, embedded or configured (`runtime`), and the foreground supervisor of `intake run`."""

"""dramatiq middleware every actor gets: the failure ledger, structlog context, the consumer's poll interval,
the job's tenant and a booted heap the garbage collector leaves alone."""

"""dramatiq middleware every actor gets: the failure ledger, structlog context, the consumer's poll interval
and the job's tenant."""

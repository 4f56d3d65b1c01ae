# syntax=docker/dockerfile:1
# Intake's fleet in one image: every process of the Procfile is a command of it (ENTRYPOINT is `intake`):
#   docker run IMAGE                                           # web: intake serve on :8000
#   docker run IMAGE worker --queues ingest
#   docker run IMAGE worker --queues ai --nice 10 --metrics-port 9193
#   docker run IMAGE clock
#   docker run IMAGE admin --host 0.0.0.0 --port 8001
#   docker run IMAGE migrate                                   # once per release, as the schema owner
# PostgreSQL (with pgvector) and Redis are services of their own (compose.yaml): the image has no embedded ones.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# -- build: wheels of the project and its dependencies, into a virtual environment ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/intake
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config ./config
COPY db ./db
COPY pipelines ./pipelines
COPY workers ./workers
# The local AI provider's libraries (the `local-ai` extra: numpy, lingua, vaderSentiment, scikit-learn; about
# 370 MB) are in by default, as tenants use the local provider unless told otherwise. A fleet whose tenants all
# use a hosted provider builds without them (`--build-arg INTAKE_EXTRAS=`): see docs/deployment.md.
ARG INTAKE_EXTRAS="[local-ai]"
RUN /opt/intake/bin/pip install --upgrade pip && /opt/intake/bin/pip install ".${INTAKE_EXTRAS}"

# -- run: the environment only, as a user that is not root ----------------------------------------------
FROM ${PYTHON_IMAGE} AS run
ENV PATH=/opt/intake/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    INTAKE_LOG_FORMAT=json INTAKE_HOME=/var/lib/intake
RUN groupadd --system --gid 10001 intake \
    && useradd --system --uid 10001 --gid intake --home-dir /var/lib/intake --create-home --shell /usr/sbin/nologin intake
COPY --from=build /opt/intake /opt/intake
USER 10001:10001
WORKDIR /var/lib/intake
EXPOSE 8000 8001 9191
# The web's liveness; compose.yaml gives the other processes checks of their own (or none).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["intake"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

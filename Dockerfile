# The llmmeter services image: one image for ingest, query, alerts, the console and the
# migrations Job (the Kubernetes manifests in deploy/k8s pick the command).
#   docker build -t llmmeter-services:dev .
#   docker run --rm -e DATABASE_URL=postgresql://... llmmeter-services:dev python -m llmmeter_query
# Note: this file is not built by the tests or CI; the development machines
# have no Docker engine. tests/test_k8s_services.py checks it statically.

# Build stage: a virtualenv with the client (`llmmeter`, its CLI) and the
# services, without the `embedded` and `dev` extras. Every dependency ships
# manylinux wheels for CPython 3.11, so no compiler is needed, and nothing of
# this stage but the virtualenv reaches the final image.
# Chart.js for the console, from the npm registry (as `make install` does), not from a CDN.
FROM node:22-slim AS assets
RUN npm install --no-audit --no-fund --prefix /assets chart.js@4.5.1

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY clients/python ./clients/python
COPY pyproject.toml ./
COPY services ./services
RUN python -m venv /opt/llmmeter \
 && /opt/llmmeter/bin/pip install ./clients/python . \
 && /opt/llmmeter/bin/python -m compileall -q /opt/llmmeter/lib

# Runtime stage: the same base image (the virtualenv's python links to it),
# a non-root user, and a read-only root filesystem in mind (bytecode compiled
# above, nothing written outside /tmp).
FROM python:3.11-slim
RUN groupadd --system --gid 10001 llmmeter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin llmmeter
COPY --from=build /opt/llmmeter /opt/llmmeter
COPY --from=assets /assets/node_modules/chart.js/dist/chart.umd.js /opt/llmmeter/share/chart.umd.js
ENV PATH=/opt/llmmeter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LLMMETER_INGEST_HOST=0.0.0.0 \
    LLMMETER_QUERY_HOST=0.0.0.0 \
    LLMMETER_ALERTS_HOST=0.0.0.0 \
    LLMMETER_CONSOLE_HOST=0.0.0.0 \
    LLMMETER_CONSOLE_CHARTJS_FILE=/opt/llmmeter/share/chart.umd.js
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 50052 50053 4318 8080 9464 9465 9466
CMD ["python", "-m", "llmmeter_ingest"]

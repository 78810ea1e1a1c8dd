# rankserve, CPU image. Build: docker build -t rankserve:cpu .
# Run:   docker run -p 8000:8000 rankserve:cpu                      (the packaged all-MiniLM-L6-v2)
#        docker run -p 8000:8000 -v /path/to/model:/model:ro -e NIM_MODEL_PATH=/model rankserve:cpu
#        docker run -p 8000:8000 -v hf-cache:/home/rankserve/.cache/huggingface -e HF_TOKEN \
#            rankserve:cpu --model BAAI/bge-reranker-v2-m3            (a Hub repo, cached in the volume)
# Two stages: the build stage compiles nothing but keeps pip's work out of the serving image; the
# serving image holds the virtual environment (torch CPU wheel + rankserve, no evaluation extras).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch from PyTorch's CPU index: the default index resolves to the CUDA build (~3 GB more).
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Optional extras, e.g. --build-arg EXTRAS="[openvino]" for --backend openvino (the fastest CPU mode
# where the CPU has native bf16) or "[onnx]" for --backend onnxruntime.
# The packaged default model's package requires sentence-transformers, which pulls transformers,
# scipy and scikit-learn (~340 MB) that serving never imports (tests/unit/test_footprint.py): they
# are removed unless an extra needs them (eval/train: bm25s needs scipy, training the rest).
ARG EXTRAS=""
RUN pip install --no-cache-dir "./${EXTRAS}" \
    && if [ -z "${EXTRAS}" ]; then \
        pip uninstall -y sentence-transformers transformers scikit-learn scipy joblib threadpoolctl; \
    fi

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RANKSERVE_HOST=0.0.0.0 \
    RANKSERVE_PORT=8000 \
    XDG_CACHE_HOME=/home/rankserve/.cache
COPY --from=build /opt/venv /opt/venv
# The Hugging Face cache (--model org/name) exists in the image, owned by the user, so that a volume
# mounted there (docker run -v hf-cache:/home/rankserve/.cache/huggingface) starts writable.
RUN useradd --create-home --uid 10001 --user-group rankserve \
    && mkdir -p /home/rankserve/.cache/huggingface && chown -R rankserve:rankserve /home/rankserve/.cache
USER 10001
WORKDIR /home/rankserve
EXPOSE 8000
# Ready, not just live: a loading or draining server is reported unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v1/health/ready' % os.environ.get('RANKSERVE_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["rankserve", "serve"]

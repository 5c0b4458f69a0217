# The gateway image, installed from uv.lock like every other install (no worker extras: the GPU
# worker has its own image, deploy/worker.Dockerfile, with torch for CUDA and the model weights).
FROM python:3.11-slim
WORKDIR /app
COPY .ci/uv-requirements.txt .ci/
RUN pip install --no-cache-dir --require-hashes --no-deps -r .ci/uv-requirements.txt
COPY pyproject.toml uv.lock README.md ./
COPY gateway gateway
COPY providers providers
COPY worker worker
ENV UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
RUN uv sync --frozen --no-dev --no-editable --no-cache
COPY pricing.yaml .
ENV GATEWAY_DATA_DIR=/data
EXPOSE 8000
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

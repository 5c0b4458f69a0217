# The gateway image. The GPU worker has its own (deploy/worker.Dockerfile), since it needs torch
# with CUDA and the model weights.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY providers providers
COPY worker worker
RUN pip install --no-cache-dir .
COPY pricing.yaml .
ENV GATEWAY_DATA_DIR=/data
EXPOSE 8000
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

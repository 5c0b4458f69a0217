# A GPU worker: one process per GPU, serving one HiDream-I1 variant from weights on a volume.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY providers providers
COPY worker worker
RUN pip install --no-cache-dir ".[worker]" --no-deps && \
    pip install --no-cache-dir "diffusers>=0.34" "transformers>=4.47" tokenizers safetensors fastapi "uvicorn[standard]" prometheus-client pydantic-settings pillow
EXPOSE 9000
CMD ["gateway-worker", "--variant", "full", "--host", "0.0.0.0", "--port", "9000", "--weights-dir", "/weights", "--device", "cuda"]

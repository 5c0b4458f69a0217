# A GPU worker: one process per GPU, serving one HiDream-I1 variant from weights on a volume.
# torch comes with CUDA from the base image; everything else from uv.lock, by hash.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
COPY .ci/uv-requirements.txt .ci/
RUN pip install --no-cache-dir --require-hashes --no-deps -r .ci/uv-requirements.txt
COPY pyproject.toml uv.lock README.md ./
RUN uv export --frozen --extra worker --no-dev --no-emit-project --no-emit-package torch -o /tmp/locked.txt && \
    pip install --no-cache-dir --require-hashes -r /tmp/locked.txt
COPY gateway gateway
COPY providers providers
COPY worker worker
RUN pip install --no-cache-dir --no-deps .
EXPOSE 9000
CMD ["gateway-worker", "--variant", "full", "--host", "0.0.0.0", "--port", "9000", "--weights-dir", "/weights", "--device", "cuda"]

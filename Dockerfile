# The robustar-ls ML backend (and trainer). CPU by default; the trainer profile in
# docker-compose.yml runs the same image with the GPU reserved.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY robustar_ls ./robustar_ls
COPY label_config ./label_config
COPY scripts ./scripts
RUN pip install .

EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD curl -fsS http://localhost:9090/health || exit 1
CMD ["robustar-ls", "serve", "--checkpoint", "/checkpoints/model.pt", \
     "--document-root", "/data", "--host", "0.0.0.0", "--port", "9090", "--workers", "2"]

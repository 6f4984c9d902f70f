# One image for every process of the mesh; the compose file picks the command.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 NURTURE_BIND_HOST=0.0.0.0
COPY pyproject.toml README.md ./
COPY nurture ./nurture
COPY services ./services
COPY gateway ./gateway
COPY cli ./cli
RUN pip install . && useradd --system nurture
USER nurture

# syntax=docker/dockerfile:1

# Build stage: install the package and its runtime dependencies into a self-contained venv.
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
RUN /opt/venv/bin/pip install .

# Runtime stage: the venv only, run by an unprivileged user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOYALTY_LISTEN_ADDRESS=0.0.0.0:50051 \
    LOYALTY_DATABASE_URL=sqlite+aiosqlite:////data/loyalty.db
RUN groupadd --system --gid 10001 loyalty \
 && useradd --system --uid 10001 --gid loyalty --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin loyalty \
 && mkdir /data \
 && chown loyalty:loyalty /data
COPY --from=builder /opt/venv /opt/venv
USER loyalty
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["loyalty-engine", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["loyalty-engine"]
# Plaintext inside the container network; set LOYALTY_TLS_CERT_FILE and LOYALTY_TLS_KEY_FILE
# (and LOYALTY_TLS_CLIENT_CA_FILE for mTLS) and drop --plaintext to serve TLS.
CMD ["serve", "--migrate", "--plaintext"]

# syntax=docker/dockerfile:1
# Build: wheels for the app (its Alembic migrations ship inside, as app/migrations) and its pinned
# dependencies, in a throwaway stage.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

# Run: only the installed wheels and a non-root user; no source tree, no PYTHONPATH. The
# wheels are mounted for the install, not copied, so they leave no layer behind.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite:////var/lib/jobs-gateway/jobs-gateway.db
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels jobs-gateway
RUN useradd --system --uid 10001 --home-dir /var/lib/jobs-gateway gateway \
    && mkdir -p /var/lib/jobs-gateway && chown gateway /var/lib/jobs-gateway
WORKDIR /var/lib/jobs-gateway
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["jobs-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]

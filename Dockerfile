# syntax=docker/dockerfile:1
# Build: wheels for the app and its pinned dependencies, in a throwaway stage.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

# Run: the installed wheels, the source with its migrations, and a non-root user.
# The app finds its Alembic scripts beside the package (<root>/migrations), so the source is
# laid out as in a checkout under /app and put first on the path.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app \
    DATABASE_URL=sqlite:////var/lib/jobs-gateway/jobs-gateway.db
RUN useradd --system --uid 10001 --home-dir /app gateway \
    && mkdir -p /var/lib/jobs-gateway && chown gateway /var/lib/jobs-gateway
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels jobs-gateway && rm -rf /wheels
COPY alembic.ini ./
COPY app ./app
COPY migrations ./migrations
USER gateway
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["jobs-gateway", "serve", "--host", "0.0.0.0", "--port", "8000"]

# The ai-worker image: one image for every service of docker-compose.yml (the command
# picks the role: migrate, worker, beat, flower, metrics, or any other `aiw` command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIW_DATA_DIR=/data

WORKDIR /srv/ai-worker

# Dependencies first (a layer that survives code changes), then the code. The install
# is editable on purpose: the Alembic scripts in migrations/ are found next to app/.
COPY pyproject.toml README.md ./
RUN mkdir -p app workers && touch app/__init__.py workers/__init__.py \
    && pip install . && pip uninstall -y ai-worker
COPY alembic.ini ./
COPY migrations ./migrations
COPY workers ./workers
COPY app ./app
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --no-create-home --home-dir /srv/ai-worker aiw \
    && mkdir -p /data && chown aiw /data

USER aiw
VOLUME ["/data"]
ENTRYPOINT ["aiw"]
CMD ["--help"]

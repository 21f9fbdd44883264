# adserve: one image for every role (serve, worker, migrate), configured only through ADSERVE_*.
# CPU-only torch, pinned; the package is installed in place (editable) because alembic.ini,
# migrations/ and configs/ are read from the source tree.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/adserve \
    PATH=/opt/adserve/bin:$PATH

# torch's CPU wheels (the default wheel of this version bundles CUDA, gigabytes unused here)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/adserve \
 && pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0

WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY alembic.ini ./
COPY configs ./configs
COPY migrations ./migrations
COPY adserve ./adserve
RUN pip install --no-deps -e . \
 && useradd --system --uid 10001 --home-dir /data adserve \
 && mkdir -p /data/var /data/models \
 && chown -R adserve /data

# Production settings; the database URL and the secret come from the environment.
ENV ADSERVE_ENV=prod \
    ADSERVE_VAR_DIR=/data/var \
    ADSERVE_WRITER_SPOOL_DIR=/data/var/spool \
    ADSERVE_MODELS_DIR=/data/models \
    ADSERVE_SERVER_HOST=0.0.0.0 \
    ADSERVE_SERVER_PORT=8000

USER adserve
EXPOSE 8000
VOLUME ["/data/var", "/data/models"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"]
ENTRYPOINT ["adserve"]
CMD ["serve"]

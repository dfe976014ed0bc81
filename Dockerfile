# The sidecar's image: gunicorn serving api:create_app() as an unprivileged user.
# Built by docker-compose.yml (service "sidecar"); `docker build -t comfy-sidecar .` works too.

# Python 3.11 on Debian 12, pinned by version and by the digest of its multi-architecture
# index, so a rebuild gets the same base. To move on: pick the new tag, read its digest with
# `docker buildx imagetools inspect python:<tag>`, and update both here.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so files it writes on volumes have a predictable owner.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin sidecar

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt (all pinned) changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY gunicorn.conf.py ./
COPY api/ ./api/
COPY workflows/ ./workflows/

# STATE_DIR (job database, tracker lock) is a volume of its own in docker-compose.yml; a new
# named volume takes this directory's owner, so the unprivileged user can write it.
RUN mkdir -p /state /workspace && chown sidecar:sidecar /state

USER 10001:10001

ENV API_HOST=0.0.0.0 \
    API_PORT=5000 \
    WORKSPACE_PATH=/workspace \
    STATE_DIR=/state

EXPOSE 5000

# Liveness: /health answers 200 whenever the sidecar runs, also while ComfyUI is still loading
# (GET /api/health, the readiness probe, says 503 until ComfyUI answers). Asked at the
# container's own address (its host name), where a proxy connects, not at loopback: without
# API_KEYS the sidecar listens on loopback only, unreachable for anything else.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, socket, urllib.request; urllib.request.urlopen('http://%s:%s/health' % (socket.gethostname(), os.environ.get('API_PORT', '5000')), timeout=4)" || exit 1

CMD ["gunicorn", "-c", "gunicorn.conf.py", "api:create_app()"]

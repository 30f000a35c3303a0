# A container image for the service: `docker build -t scene-packer:2.0.0 .`
# Not built by this repository's CI (its machines reach no base-image registry): docs/deployment.md,
# "Running on Kubernetes", says so. deploy/kubernetes/base runs it as user 10001 with a read-only
# root filesystem; DATA_DIR and /tmp are the writable volumes.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md hypercorn.toml constraints.txt ./
COPY service ./service
COPY alembic ./alembic
# The wheel, as an adopter installs it: it carries the migrations and a default server file
# (service/backends/db/migrations and service/serving/hypercorn.toml link to the top-level ones),
# and its dependencies at the versions CI tested (constraints.txt).
RUN python -m venv /opt/scene-packer \
    && /opt/scene-packer/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && /opt/scene-packer/bin/pip install --no-cache-dir -c constraints.txt /dist/*.whl

FROM python:3.11-slim
ENV PATH=/opt/scene-packer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVIRONMENT=production \
    DATA_DIR=/var/lib/scene-packer
RUN groupadd --gid 10001 scene-packer \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin scene-packer \
    && mkdir -p /var/lib/scene-packer /etc/scene-packer \
    && chown 10001:10001 /var/lib/scene-packer
COPY --from=build /opt/scene-packer /opt/scene-packer
WORKDIR /var/lib/scene-packer
COPY deploy/kubernetes/base/hypercorn.toml /etc/scene-packer/hypercorn.toml
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/health/live', timeout=2).status != 200)"]
# Drains on SIGTERM (docs/serving.md); `scene-packer migrate` and
# `scene-packer check` are the other commands.
ENTRYPOINT ["scene-packer"]
CMD ["serve", "--config", "/etc/scene-packer/hypercorn.toml"]

# One image for both components: `labkeeper operator ...` (non-root) and `labkeeper agent ...`
# (the chart runs the agent as root with a few capabilities for useradd, chown and setfacl).
# PYTHON_IMAGE can point at a local stand-in where no registry is reachable (hack/image-base.sh).
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/labkeeper
COPY pyproject.toml README* /src/
COPY operator /src/operator
# an optional build secret `ca` (a CA bundle) for builds behind a TLS-inspecting proxy; not kept in the image
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/labkeeper/bin/pip install /src \
 && /opt/labkeeper/bin/python -m compileall -q /opt/labkeeper

FROM ${PYTHON_IMAGE}
# acl: setfacl/getfacl for shared caches and model stores; passwd: useradd/groupadd for the agent
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends acl passwd \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 labkeeper \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin labkeeper
COPY --from=build /opt/labkeeper /opt/labkeeper
# the root filesystem is read-only in the pod: no .pyc writes, unbuffered logs
ENV PATH=/opt/labkeeper/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["labkeeper"]
CMD ["--help"]

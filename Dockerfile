# syntax=docker/dockerfile:1
# One image runs the operator and the router: `modelflock operator …` / `modelflock router …`.
#   docker build -t modelflock/modelflock:0.1.0 .
# The Python base is pinned by tag; the builder's wheels are installed offline in the final
# stage, which keeps no compiler, no build front-end and no source tree.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m pip install build==1.3.0
COPY pyproject.toml README.md ./
COPY operator ./operator
# The project's wheel, then wheels of all its runtime dependencies next to it.
RUN python -m build --wheel --outdir /wheels . \
 && python -m pip wheel --wheel-dir /wheels /wheels/modelflock-*.whl

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Install from the builder's wheels only (no index), through a bind mount so no wheel stays
# in a layer; then drop the packaging tools the runtime does not need.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels modelflock \
 && python -m pip uninstall --yes setuptools wheel \
 && python -m pip check \
 && groupadd --system --gid 65532 modelflock \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin modelflock
# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /
EXPOSE 8080 8081 8090 9443
ENTRYPOINT ["modelflock"]
CMD ["--help"]

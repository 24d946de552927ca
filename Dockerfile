# zcompute: one image for the head node, providers and the client.
#
#   docker build -t zcompute .                        # CPU torch (default)
#   docker build --build-arg TORCH=none -t zcompute .  # no torch: head, CPU matmul providers, clients
#   docker build --build-arg TORCH=cuda -t zcompute:cuda .   # CUDA torch; run with --gpus all (docs/DEPLOY.md)
#
# Layers from the slowest to change to the fastest: torch, then the dependencies listed in
# pyproject.toml, then the source. Editing the code rebuilds only the last two small layers.
FROM python:3.11-slim

# none | cpu | cuda
ARG TORCH=cpu
# the CUDA wheel index to use with TORCH=cuda (pick the version your driver supports)
ARG TORCH_CUDA=cu124

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/zcompute \
    PATH=/opt/zcompute/bin:$PATH

RUN python -m venv /opt/zcompute

# 1. torch (optional; the largest layer, independent of this project's files)
RUN case "$TORCH" in \
      none) echo "no torch: train needs a provider image built with TORCH=cpu or cuda" ;; \
      cpu)  pip install torch --index-url https://download.pytorch.org/whl/cpu ;; \
      cuda) pip install torch --index-url "https://download.pytorch.org/whl/$TORCH_CUDA" ;; \
      *)    echo "TORCH must be none, cpu or cuda (got '$TORCH')" >&2; exit 1 ;; \
    esac

# 2. the dependencies from pyproject.toml, before the source so code edits keep this layer
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 3. the source
COPY README.md ./
COPY common ./common
COPY head_node ./head_node
COPY provider_macos ./provider_macos
COPY provider_windows ./provider_windows
COPY user_client ./user_client
RUN pip install --no-deps . && rm -rf /src/build

# A non-root user; /data (head state) and /join (join strings for providers) are volume mount points
# owned by it, so a fresh named volume takes that owner.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin zcompute \
 && mkdir -p /data /join \
 && chown zcompute:zcompute /data /join
USER zcompute
WORKDIR /home/zcompute

# 5555-5559: registration, heartbeat, tasks, results, client API; 8080: dashboard and /metrics
EXPOSE 5555-5559 8080
CMD ["head-node", "start", "--data-dir", "/data"]

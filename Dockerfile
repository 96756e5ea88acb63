# radclip for the paper profile on a CUDA machine (4+ GPUs, Ray cluster).
#
# Build (from the checkout root; .dockerignore keeps data/, mlruns/, mlflow.db, models/, the DVC cache,
# .git/ and the venv out of the build context, so no data or PHI is baked into the image):
#   docker build -t radclip .
#
# Run: the image holds the environment, the checkout is mounted over /work. DVC needs the checkout's
# .git (not in the image), and radclip is installed editable from /work, so the mounted checkout's code
# is what runs. The container runs as uid 1000 and writes data/, models/, reports/, mlruns/ there.
#   docker run --gpus all -v $PWD:/work -w /work --entrypoint dvc radclip repro
#   docker run --gpus all -v $PWD:/work -w /work -v /data:/data:ro -e RADCLIP_PHI_SALT --entrypoint dvc radclip \
#     exp run -S profile=paper
#   docker run --gpus all -v $PWD:/work -w /work -v /data:/data:ro -e RADCLIP_PHI_SALT radclip --profile paper curate
# (/data: the real collections at the paths in params/paper.yaml; RADCLIP_PHI_SALT: your PHI salt, without
# which curation of real data stops.)
#
# Versions: every pip install below uses constraints.txt, the same file the Makefile's venv installs from.
# From PyPI, torch==2.13.0 on Linux is the CUDA build and brings its own CUDA libraries as wheels
# (nvidia-*-cu13: CUDA 13.0), so the host needs an NVIDIA driver for CUDA 13.0; on the CPU development
# machines `pip install torch==2.13.0` takes a CPU build on disk.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    RAY_USAGE_STATS_ENABLED=0

# Ubuntu 24.04's own Python, 3.12 (its archive has no 3.11 packages); pyproject: >=3.10,<3.13.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git \
 && rm -rf /var/lib/apt/lists/*

# Non-root user with a writable HOME (Ray, MLflow and the HF cache write there). Ubuntu 24.04 images
# ship a user `ubuntu` with uid 1000; it is removed so that `radclip` can take uid 1000, the usual
# owner of a checkout on a single-user host, and files written into the mounted checkout keep that owner.
RUN userdel --remove ubuntu \
 && useradd --create-home --uid 1000 --user-group radclip \
 && mkdir /work && chown radclip:radclip /work \
 && git config --system --add safe.directory /work
# (safe.directory: git and DVC still accept the mounted checkout when its owner is not uid 1000.)
ENV HOME=/home/radclip \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/radclip/.cache/huggingface
RUN python3 -m venv /opt/venv && chown -R radclip:radclip /opt/venv

USER radclip
WORKDIR /work
COPY --chown=radclip:radclip pyproject.toml README.md constraints.txt ./
COPY --chown=radclip:radclip radclip ./radclip
RUN pip install --upgrade -c constraints.txt pip \
 && pip install -c constraints.txt "torch==2.13.0" \
 && pip install -c constraints.txt -e .
# pipelines/, params*, dvc.yaml and the rest of the source (what .dockerignore lets through).
COPY --chown=radclip:radclip . .

# CLIP weights are mounted or baked into the HF cache beforehand (HF_HUB_OFFLINE=1):
#   huggingface-cli download openai/clip-vit-large-patch14  (on a machine with access)
ENTRYPOINT ["radclip"]
CMD ["--help"]

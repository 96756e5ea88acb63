# radclip for the paper profile on a CUDA machine (4+ GPUs, Ray cluster).
# Build:  docker build -t radclip .
# Run:    docker run --gpus all -v /data:/data -v $PWD:/work -w /work radclip --profile paper curate
# Kept in step with pyproject.toml: the same pins. From PyPI, torch==2.13.0 on Linux is the CUDA
# build (on the CPU development machines `pip install torch==2.13.0` takes a CPU build on disk).
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

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip git \
 && rm -rf /var/lib/apt/lists/*

# Non-root user with a writable HOME (Ray, MLflow and the HF cache write there).
RUN useradd --create-home --uid 1000 radclip
ENV HOME=/home/radclip \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/radclip/.cache/huggingface
RUN python3.11 -m venv /opt/venv && chown -R radclip:radclip /opt/venv

USER radclip
WORKDIR /home/radclip/radclip
COPY --chown=radclip:radclip pyproject.toml README.md ./
COPY --chown=radclip:radclip radclip ./radclip
RUN pip install --upgrade pip \
 && pip install "torch==2.13.0" \
 && pip install -e .
COPY --chown=radclip:radclip . .

# CLIP weights are mounted or baked into the HF cache beforehand (HF_HUB_OFFLINE=1):
#   huggingface-cli download openai/clip-vit-large-patch14  (on a machine with access)
ENTRYPOINT ["radclip"]
CMD ["--help"]

# GPU image for nemo-erprm on H100 clusters (labeling with vLLM, training with NeMo 2 +
# Transformer Engine + apex). Not buildable on the CPU dev machines (no Docker engine there).
#
#   docker build -t nemo-erprm:latest .                      # labeling + training
#   docker build --build-arg WITH_VLLM=1 -t nemo-erprm:vllm .   # + vLLM for labeling
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#     -v /models:/models -v $PWD/outputs:/workspace/nemo-erprm/outputs -it nemo-erprm:latest \
#     torchrun --nproc_per_node=8 -m nemo_erprm.train --config conf/erprm_mistral_7b.yaml
#   # Slurm + pyxis: enroot import dockerd://nemo-erprm:latest, then
#   ERPRM_CONTAINER_IMAGE=nemo-erprm+latest.sqsh sbatch slurm/train_erprm.sh conf/erprm_mistral_7b.yaml
#
# The NeMo Framework container brings CUDA torch, Transformer Engine, NVIDIA apex and
# megatron-core; the 26.02 generation carries nemo-toolkit 2.7.x (the last release with
# nemo.collections.llm) on megatron-core 0.15.x. Override BASE_IMAGE to pin another tag.
ARG BASE_IMAGE=nvcr.io/nvidia/nemo:26.02
FROM ${BASE_IMAGE}

ARG WITH_VLLM=0
WORKDIR /workspace/nemo-erprm

# Light dependencies of the labeling/eval stages; torch, NeMo, megatron-core, TE and apex
# come from the base image and must not be replaced (no constraints file from requirements/
# here: that one pins the CPU wheel of torch).
RUN pip install --no-cache-dir "math-verify" "gguf" "omegaconf>=2.3" "rich" "tqdm" "datasets" "matplotlib" \
 && if [ "$WITH_VLLM" = "1" ]; then pip install --no-cache-dir vllm; fi

COPY pyproject.toml README.md ./
COPY nemo_erprm ./nemo_erprm
COPY conf ./conf
COPY tools ./tools
COPY slurm ./slurm
RUN pip install --no-cache-dir --no-deps -e . \
 && python -c "import nemo_erprm.labeling, nemo_erprm.train, megatron.core, transformer_engine; print('nemo-erprm image ok')"

# megatron's TP comm overlap expects one CUDA work queue; logs unbuffered for Slurm
ENV PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
CMD ["bash"]

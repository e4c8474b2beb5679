#!/usr/bin/env bash
# The GPU issue's measurements in one run on a CUDA machine (docs/gpu.md, "Measuring a GPU").
#
#   bash benchmarks/gpu_session.sh [OUT]
#
# OUT (default benchmarks/results) receives gpu_deploy_<gpu>.json, written after each model and
# batch, and vit_local_gpu/, the run folder of a search on hardware=local_gpu. Wheels in .whl/
# (the packages the machine lacks: see docs/gpu.md) are installed first. Each step runs even
# when the one before it failed; the script exits with the first failure's status.
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit
export PYTHONUNBUFFERED=1 RLPRUNE_CACHE="$out/cache"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())") || exit
status=0
run() { "$@" || { code=$?; [ "$status" != 0 ] || status=$code; }; }
run python3 -m rlprune model=vit data=digits model.patch=1 model.dim=512 model.depth=4 model.heads=8 \
  model.mlp_ratio=4 dense.lr=0.001 hardware=local_gpu hardware.batch_size=256 device=cuda \
  budget.latency=0.8 search.evaluations=300 finetune.epochs=2 wandb.mode=disabled \
  hydra.run.dir="$out/vit_local_gpu"
run python3 -m rlprune.bench gpu --deploy --models vit resnet20 mobilenetv2 lm --batches 256 32 1 \
  --out "$out/gpu_deploy_$gpu.json"
exit "$status"

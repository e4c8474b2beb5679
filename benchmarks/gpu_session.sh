#!/usr/bin/env bash
# The GPU issue's measurements on a CUDA machine (docs/gpu.md, "Measuring a GPU").
#
#   bash benchmarks/gpu_session.sh [OUT [STEP ...]]
#
# STEP is one of: tests (the CUDA tests, in seconds; results in OUT/cuda_tests.xml), search (a
# ViT search on hardware=local_gpu, device=cuda; its run folder stays in the cache folder, and
# its report and policy are copied to OUT/vit_local_gpu_*), or a model of
# `python -m rlprune.bench gpu --deploy` (resnet20, mobilenetv2, vit, lm: its JSON is
# OUT/gpu_deploy_<gpu>_<model>.json, written after each batch). Default: every step, in that
# order; OUT defaults to benchmarks/results. Wheels in .whl/ (the packages the machine lacks,
# fetched by benchmarks/gpu_wheels.sh) are installed first. Every step runs even when one before it failed; the script
# exits with the first failure's status.
set -uo pipefail
out=${1:-benchmarks/results}
steps=("${@:2}")
[ ${#steps[@]} -gt 0 ] || steps=(tests search resnet20 mobilenetv2 vit lm)
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit
if [ -z "${RLPRUNE_CACHE:-}" ]; then  # dense models and tables, in a folder of this run's own
  RLPRUNE_CACHE=$(mktemp -d) || exit
  trap 'rm -rf "$RLPRUNE_CACHE"' EXIT
fi
export PYTHONUNBUFFERED=1 RLPRUNE_CACHE
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())") || exit
status=0
run() { "$@" || { code=$?; [ "$status" != 0 ] || status=$code; }; }
for step in "${steps[@]}"; do
  started=$SECONDS
  if [ "$step" = tests ]; then
    run python3 -m pytest -q -p no:cacheprovider --junitxml "$out/cuda_tests.xml" \
      tests/test_local_gpu.py tests/test_device.py
  elif [ "$step" = search ]; then
    # the run's networks are too large to fetch from a lent machine: only its report and policy go to OUT
    run_dir="$RLPRUNE_CACHE/runs/vit_local_gpu_$(date +%Y%m%d_%H%M%S)"
    run python3 -m rlprune model=vit data=digits model.patch=1 model.dim=512 model.depth=4 model.heads=8 \
      model.mlp_ratio=4 dense.lr=0.001 hardware=local_gpu hardware.batch_size=256 device=cuda \
      budget.latency=0.8 search.evaluations=300 finetune.epochs=2 wandb.mode=disabled \
      hydra.run.dir="$run_dir"
    for name in report.json policy.yaml error.log; do
      [ ! -f "$run_dir/$name" ] || cp "$run_dir/$name" "$out/vit_local_gpu_$name"
    done
  else
    run python3 -m rlprune.bench gpu --deploy --models "$step" --batches 256 32 1 \
      --out "$out/gpu_deploy_${gpu}_$step.json"
  fi
  echo "gpu_session: $step took $((SECONDS - started)) s (status so far $status)"
done
exit "$status"

#!/usr/bin/env bash
# Fetches into .whl/ the wheels a lent GPU machine lacks, for its Python (3.12, x86-64 Linux),
# so that gpu_session.sh can install them there without a package index (docs/gpu.md,
# "Measuring a GPU"). Run it here, where pip reaches an index; then carry .whl with each call.
#
#   bash benchmarks/gpu_wheels.sh
#
# The pins are the versions the test suite runs with here; the machine's image has the rest
# (numpy, scipy, cloudpickle, markupsafe, pyyaml, rich, ...). .whl/ is kept out of git.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=(
  hydra-core==1.3.8 omegaconf==2.3.1
  gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2
  torch-pruning==1.6.1 mnist1d==0.0.2.post1
  optuna==5.1.0 alembic==1.20.1 colorlog==6.12.0 sqlalchemy==2.1.9 mako==1.4.3 greenlet
  setuptools==84.2.1  # building rlprune needs >= 77; the image's may be older
)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"
# antlr4 4.9.3 (what omegaconf 2.3 needs) is published as source only; it is pure Python
python3 -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls .whl

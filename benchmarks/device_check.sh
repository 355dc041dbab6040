#!/usr/bin/env bash
# The GPU checks of a session lent a device machine (see README "GPU"): the device-parametrized
# tests on CUDA, an end-to-end MOORe smoke run on CUDA with a kill-and-resume, and the throughput,
# model and sampler benchmarks. The machine has torch but none of gymnasium/mujoco/minari/hydra:
# they travel as wheels in .whl/ (built here with `pip download`, see the device tool's README).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=egl
export MINARI_DATASETS_PATH=/tmp/minari O2O_CACHE=/tmp/o2o-cache HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
echo "== tests on cuda"
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_store.py tests/test_sumtree.py tests/test_dynamics.py \
  tests/test_losses.py tests/test_world.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
echo "== moore smoke on cuda: SIGTERM after 45 s, then the same command resumes"
run="python3 -m agents.moore experiment=smoke device=cuda trainer.progress=false hydra.run.dir=/tmp/moore-cuda"
timeout -s TERM 45 $run > "$OUT/moore.txt" 2>&1; echo "first exit $? (143 = stopped by SIGTERM)" >> "$OUT/moore.txt"
timeout 200 $run >> "$OUT/moore.txt" 2>&1; echo "resumed exit $?" >> "$OUT/moore.txt"
tail -3 "$OUT/moore.txt"
echo "== throughput (cuda)"
for a in td3bc sac mopo; do timeout 60 python3 benchmarks/throughput.py --agent $a --seconds 10 --device cuda; done \
  2>&1 | grep '^{' | tee "$OUT/throughput.jsonl"
echo "== conservative critics in both update precisions (cuda; trainer.precision)"
for a in cql off2on; do for p in float32 bfloat16; do
  timeout 60 python3 benchmarks/throughput.py --agent $a --seconds 8 --hidden 256 256 --precision $p --device cuda
done; done 2>&1 | grep '^{' | tee -a "$OUT/throughput.jsonl"
echo "== model (cuda)"
timeout 90 python3 benchmarks/model.py --seconds 8 --device cuda 2>&1 | tail -3 | tee "$OUT/model.txt"
echo "== sampler (cuda)"
for rows in 1000000 16777217 100000000; do timeout 60 python3 benchmarks/sampler.py --rows $rows --seconds 5 --device cuda; done \
  2>&1 | tee "$OUT/sampler.jsonl"

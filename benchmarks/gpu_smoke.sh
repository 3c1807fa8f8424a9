#!/usr/bin/env bash
# GPU smoke test: every CUDA path of medlatent in under 5 minutes, with the figures printed.
#
#   bash benchmarks/gpu_smoke.sh [WORKDIR]        (from the repository root, on a machine with CUDA)
#
# 1. the CUDA tests (AMP with a gradient scaler, pinned memory + non_blocking copies, nccl DDP with 1 process)
# 2. hardware peak (fp32/bf16 GEMM, 3D conv) and the training step of each family per precision and layout
# 3. `medlatent demo`: both families trained on phantoms (VQ-VAE 8 epochs, Attri-VAE 40), evaluated,
#    reconstruct, traverse, attention -- in train.precision auto (bf16 or fp16 on CUDA)
# 4. a transformer prior over the demo VQ-VAE's codes (3 epochs) and 4 sampled volumes
# 5. the demo VQ-VAE config trained for 2 epochs under torchrun with one process (nccl DDP)
# Each stage prints its wall time; the last lines summarise. Needs no data outside the repository.
set -euo pipefail
python - <<'EOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("gpu_smoke.sh: no CUDA device visible to torch")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
WORK=${1:-$(mktemp -d /tmp/medlatent_gpu_smoke.XXXX)}
mkdir -p "$WORK"
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"
stage() {  # stage NAME COMMAND...: run it, print and keep its wall time
  local name=$1; shift
  echo "=== $name ==="
  local t0=$(date +%s.%N)
  "$@"
  local t1=$(date +%s.%N)
  awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-28s %7.1f s\n", n, b - a }' | tee -a "$SUMMARY"
}

stage "cuda tests" python -m pytest -q -p no:cacheprovider tests/medlatent/test_precision.py -k cuda
stage "hardware peak" python benchmarks/hardware_peak.py --device cuda --json "$WORK/hardware_peak.json"
stage "step time" python benchmarks/step_time.py --device cuda --steps 10 --warmup 3 --json "$WORK/step_time.json"
stage "demo (both families)" medlatent demo --out "$WORK/demo"
VQ="$WORK/demo/vqvae3d/run"
stage "train-prior (3 epochs)" medlatent train-prior "$VQ" --prior transformer --set train.epochs=3
stage "sample 4 volumes" medlatent sample "$VQ" -n 4 -o "$WORK/samples"
stage "torchrun DDP, 1 process" torchrun --standalone --nproc_per_node 1 -m medlatent.commands train \
  configs/vqvae3d_demo.yaml --set "data.manifest=$WORK/demo/phantoms/manifest.csv" --set train.epochs=2 \
  --out "$WORK/ddp_run"

echo
echo "=== figures ==="
python - "$WORK" <<'EOF'
import csv, json, sys
from pathlib import Path
work = Path(sys.argv[1])
for name in ("demo/vqvae3d/run", "demo/attrivae/run", "ddp_run"):
    rows = list(csv.DictReader(open(work / name / "metrics.csv")))
    last = rows[-1]
    seconds = sum(float(r["epoch_seconds"]) for r in rows)
    shown = {k: last[k] for k in ("precision", "channels_last", "val_loss", "val_ssim") if k in last}
    print(f"{name}: {len(rows)} epochs in {seconds:.1f} s, last epoch {shown}")
for name in ("demo/vqvae3d/run", "demo/attrivae/run"):
    metrics = json.load(open(work / name / "eval" / "metrics.json"))
    print(f"{name} test:", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
steps = json.load(open(work / "step_time.json"))
for model in ("vqvae3d", "attrivae", "monai_vqvae"):
    print(f"step time {model}:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in steps[model].items()})
peak = json.load(open(work / "hardware_peak.json"))
print("peak GFLOP/s:", {k: {p: round(v) for p, v in peak[k].items()} for k in ("gemm_2048", "conv3d")})
EOF
echo
cat "$SUMMARY"
echo "everything is under $WORK"

#!/usr/bin/env bash
# One GPU check, as one script: training throughput (tractmap's loop against a conventional
# fp32/CPU-augmentation baseline), then the paper's recipe at GPU size on a VOC dataset
# (100 epochs, batch 16, 512-px crops; AdamW, cosine, weighted Dice; selection on validation),
# then prediction and the evaluation tables on its test split.
#
#   bash benchmarks/gpu_run.sh VOC_DIR OUT_DIR
#
# VOC_DIR: a tractmap VOC dataset (results/voc, or one cut at finer tract.out_mm_per_px).
# The recipe is config.yaml's train section and model entries, with epochs, batch, crop width,
# rotation 10 deg and random weights overridden; OUT_MM_PER_PX: the crops' tract.out_mm_per_px,
# when the VOC was cut at another resolution than config.yaml's (recorded in model.pt).
# EPOCHS, SIZE, BATCH, STEPS (default 100, 512, 16, 30) shrink it for a dry run on a CPU.
# Needs torch, torchvision, scipy, statsmodels, pandas, matplotlib, scikit-image, PyYAML.
set -euo pipefail
voc=$1
out=$2
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

epochs=${EPOCHS:-100} size=${SIZE:-512} batch=${BATCH:-16}
echo "== throughput: ${size}x${size}, batch $batch"
python3 benchmarks/train_throughput.py --size "$size" --batch "$batch" --steps "${STEPS:-30}" --warmup 5 --workers 8

preds=()
for arch in fcn_resnet101 deeplabv3_resnet101; do
    echo "== paper-size training: $arch"
    # the recipe as config.yaml has it (train and the architecture's entry; the tract settings recorded
    # in model.pt), with the GPU-size overrides
    cfg=$(python3 - "$arch" "$epochs" "$batch" "$size" <<'PY'
import json, sys
import yaml
from workflow_scripts.geometry import CROP_SETTINGS
arch, epochs, batch, size = sys.argv[1], *map(int, sys.argv[2:])
c = yaml.safe_load(open("config.yaml"))
t = {k: v for k, v in c["train"].items() if k != "models"}
crop = {k: c["tract"][k] for k in CROP_SETTINGS}
crop["out_mm_per_px"] = float(__import__("os").environ.get("OUT_MM_PER_PX", crop["out_mm_per_px"]))
over = dict(epochs=epochs, batch_size=batch, crop_width=size, rotation_deg=10, backbone_weights=None)
print(json.dumps({**t, **c["train"]["models"][arch], **over, "crop": crop}))
PY
)
    start=$(date +%s)
    python3 -m workflow_scripts.train --voc="$voc" --config="$cfg" --model-out="$out/$arch.pt" \
        --history="$out/$arch-history.tsv" --curves="$out/$arch-curves.png" --state-dir="$out/state-$arch" \
        --train-list=train --val-list=val --threads=0 \
        | awk 'NR <= 3 || /epoch (1|10|25|50|75|100)\// || /^device/ || /selected/'
    echo "$arch wall $(( $(date +%s) - start )) s"
    python3 -m workflow_scripts.predict --model="$out/$arch.pt" --voc="$voc" --split=test --out="$out/pred-$arch" --threads=0
    preds+=("$arch=$out/pred-$arch")
done
echo "== test split"
python3 -m workflow_scripts.evaluate --voc="$voc" --split=test --predictions "${preds[@]}" --ci=cluster_t \
    --bootstrap=2000 --seed=2026 --alpha=0.05 --holm=pairs --out="$out/eval"
cat "$out/eval/table2.tsv"
grep -E "^metric|^dice" "$out/eval/comparison.tsv"

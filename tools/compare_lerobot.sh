#!/usr/bin/env bash
# LeRobot 0.4.4's SmolVLA and `dysta-ros bench` on the same machine, back to back, repeated.
#
#   tools/compare_lerobot.sh LEROBOT_PYTHON REFERENCE_DIR [OUT_DIR]
#
# LEROBOT_PYTHON: the python of a venv with LeRobot 0.4.4 (LeRobot is never a dependency of
# this package; see REFERENCE_DIR/setup_venv.sh). REFERENCE_DIR: the folder holding
# time_lerobot.py (lerobot_reference). Both sides: SmolVLA at the smolvla_base size, random
# fp32 weights, two 480x640 cameras, THREADS torch threads. Environment knobs (defaults):
# THREADS=2 REPEATS=2 STEPS=5 OPTIONS=exact,vision,steps5,bf16,best,fastest DYSTA_ROS=dysta-ros
# STRATEGIES=full (more rows: full,dysta) BENCH_ARGS= (more bench flags, e.g. --param dysta.vision_reuse=true)
# Writes OUT_DIR/lerobot_<r>.json, ours_<r>.json (+ .png) and ratios.json, and prints the ratios
# of LeRobot's p50 chunk time to each of our rows from the run right after it.
set -euo pipefail
LEROBOT_PYTHON=${1:?usage: $0 LEROBOT_PYTHON REFERENCE_DIR [OUT_DIR]}
REFERENCE_DIR=$(cd "${2:?usage: $0 LEROBOT_PYTHON REFERENCE_DIR [OUT_DIR]}" && pwd)
OUT_DIR=$(mkdir -p "${3:-compare_lerobot}" && cd "${3:-compare_lerobot}" && pwd)
THREADS=${THREADS:-2}
REPEATS=${REPEATS:-2}
STEPS=${STEPS:-5}
OPTIONS=${OPTIONS:-exact,vision,steps5,bf16,best,fastest}
DYSTA_ROS=${DYSTA_ROS:-dysta-ros}
STRATEGIES=${STRATEGIES:-full}
read -r -a BENCH_ARGS <<< "${BENCH_ARGS:-}"
"$LEROBOT_PYTHON" -c "import lerobot" || {
    echo "$LEROBOT_PYTHON cannot import lerobot: bash $REFERENCE_DIR/setup_venv.sh DIR builds one" >&2; exit 2; }
export OMP_NUM_THREADS=$THREADS
for r in $(seq "$REPEATS"); do
    echo "== repeat $r: LeRobot" >&2
    (cd "$REFERENCE_DIR" && "$LEROBOT_PYTHON" time_lerobot.py --threads "$THREADS" --runs "$STEPS" \
        --json "$OUT_DIR/lerobot_$r.json" > "$OUT_DIR/lerobot_$r.log")
    echo "== repeat $r: dysta-ros bench" >&2
    "$DYSTA_ROS" bench --model smolvla_base --frames sim --strategies "$STRATEGIES" --history 1 --steps "$STEPS" \
        --warmup 2 --threads "$THREADS" --options "$OPTIONS" --json "$OUT_DIR/ours_$r.json" --quiet \
        "${BENCH_ARGS[@]}" > "$OUT_DIR/ours_$r.txt"
done
python3 - "$OUT_DIR" "$REPEATS" <<'EOF'
import json, sys
from pathlib import Path

out, repeats = Path(sys.argv[1]), int(sys.argv[2])
table = {}
for r in range(1, repeats + 1):
    lerobot = json.loads((out / f"lerobot_{r}.json").read_text())
    ours = json.loads((out / f"ours_{r}.json").read_text())
    lerobot_ms = 1e3 * lerobot["p50_seconds"]["total"]
    for row in ours["runs"]:
        table.setdefault(row["strategy"], []).append({
            "repeat": r, "lerobot_ms": round(lerobot_ms, 1), "ours_ms": round(row["step_ms_p50"], 1),
            "ratio": round(lerobot_ms / row["step_ms_p50"], 2),
            "dev_mean_pct": None if row["action_dev_mean"] is None else round(100 * row["action_dev_mean"], 3),
            "stages_ms": {k: round(v, 1) for k, v in row["stage_ms_p50"].items() if v}})
    table.setdefault("lerobot stages (ms)", []).append(
        {k: round(1e3 * v, 1) for k, v in lerobot["p50_seconds"].items()})
(out / "ratios.json").write_text(json.dumps(table, indent=1) + "\n")
print(f"{'run':<16} " + " ".join(f"{'ratio r' + str(r):>9}" for r in range(1, repeats + 1)) + "   dev mean %")
for name, entries in table.items():
    if name.startswith("lerobot"):
        continue
    print(f"{name:<16} " + " ".join(f"{e['ratio']:>9.2f}" for e in entries) + f"   {entries[0]['dev_mean_pct']}")
print(f"wrote {out / 'ratios.json'}")
EOF

#!/bin/bash
# PlanetLab consolidation benchmark: every policy on every day of ../shared/data/planetlab,
# the paper's definitions and CloudSim-compat, with wall time per day (release build).
set -euo pipefail
cd "$(dirname "$0")/.."
TRACES=${1:-../shared/data/planetlab}
swift build -c release --product shepherd >/dev/null
BIN=.build/release/shepherd
echo "== paper definitions (means per host / per VM, no VM removed)"
"$BIN" simulate planetlab "$TRACES" --policy ours,lr-mmt,lrr-mmt,thr-mmt,iqr-mmt,mad-mmt
echo
echo "== --cloudsim-compat (CloudSim 4.0's released behaviour)"
"$BIN" simulate planetlab "$TRACES" --policy ours,lr-mmt,thr-mmt --cloudsim-compat

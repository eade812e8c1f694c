#!/usr/bin/env bash
# Issue 16's detectors against the poison count, detection only (detection.removal_rate = 0: each cell scores the
# cached no-defense victim's training pairs and trains nothing), BadNet on fmnist-tiny, three seeds, the authors'
# k = 16. The other angle on detection_k.sh's question: fewer poisoned pairs per 512-pair reference batch (25 of
# 20,000 is under one per batch, 600 about 15) instead of a larger k.
#
#   bash benchmarks/detection_counts.sh OUT [COUNTS]      # COUNTS default 25,75,200,600
#
# OUT may hold (or hard-link, `cp -al`) the cache of issue 18's poison-count sweep (benchmarks/sweeps18.sh) on
# fmnist-tiny: its victims are reused; a count whose victims are missing trains them. Resumable. Then
# `cleanbench leaderboard OUT --out LB && python benchmarks/study_table.py LB --detection`.
set -euo pipefail
out=${1:?usage: detection_counts.sh OUT [COUNTS]}
counts=${2:-25,75,200,600}
"${CLEANBENCH:-cleanbench}" "${ACTION:-run}" --preset fmnist-tiny --seeds 0,1,2 --workers "${WORKERS:-2}" \
    --out "$out" --attacks badnet --defenses detect-kdist,detect-slof,detect-dao \
    --sweep detection.removal_rate=0 --sweep "attacks.badnet.poison_count=$counts"

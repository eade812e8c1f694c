#!/usr/bin/env bash
# Why Huang et al.'s detectors miss fmnist-tiny's poison (issue 16): detection only (detection.removal_rate = 0,
# so each cell scores the cached no-defense victim's training pairs and trains nothing), each detector's k swept
# over 8 to 128 on the dirty-label attacks, three seeds. At the preset's 3% poison a 512-pair reference batch holds
# about 15 poisoned pairs, so with the authors' k = 16 a poisoned pair's k-th neighbour may still be poisoned: if
# that is why the tight poison cluster does not stand out, AUROC should rise once k exceeds it.
#
#   bash benchmarks/detection_k.sh OUT
#
# OUT may hold (or hard-link, `cp -al`) the cache of a run of the same attacks and seeds on fmnist-tiny: the
# victims are reused. Resumable: rerun after a kill. `cleanbench leaderboard OUT` then writes detection.csv: AUROC,
# AUPRC and TPR at 1%/5% FPR per detector, attack and k, with intervals over the seeds.
set -euo pipefail
out=${1:?usage: detection_k.sh OUT}
cleanbench=${CLEANBENCH:-cleanbench}
for detector in detect-kdist detect-slof detect-dao; do
  "$cleanbench" "${ACTION:-run}" --preset fmnist-tiny --seeds 0,1,2 --workers "${WORKERS:-2}" --out "$out" \
      --attacks badnet,blended,wanet --defenses "$detector" \
      --sweep detection.removal_rate=0 --sweep "defenses.$detector.k=8,16,32,64,128"
done

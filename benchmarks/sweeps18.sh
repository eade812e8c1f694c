#!/usr/bin/env bash
# Issue 18's study: the CleanCLIP paper's one-factor curves (reference §7) on one preset, BadNet and Blended, three
# seeds, each sweep a grid axis of `cleanbench run` into one folder, so the points share the cache (the sweeps over
# a defense setting and over data.clean_pairs train no victim beyond the plain grid's; the poison-count sweeps train
# one victim per new count and seed). Resumable: rerun the same command after a kill.
#
#   bash benchmarks/sweeps18.sh fmnist-tiny OUT
#   bash benchmarks/sweeps18.sh fmnist-tiny-pretrained OUT
#
# WORKERS (default 2) sets --workers. Each command prints its planned victims, cells and estimated time first;
# ACTION=validate prints only that, for every command, and trains nothing. Rows committed from an earlier machine
# resume the study: copy them to OUT/results.csv first, and the cells they hold are skipped.
set -euo pipefail
preset=${1:?usage: sweeps18.sh PRESET OUT}
out=${2:?usage: sweeps18.sh PRESET OUT}
cleanbench=${CLEANBENCH:-cleanbench}
run() { "$cleanbench" "${ACTION:-run}" --preset "$preset" --seeds 0,1,2 --workers "${WORKERS:-2}" --out "$out" "$@"; }

# Poison counts from "does not take" to the preset's default (3% of 20,000 training pairs = 600). One command per
# attack: two --sweep axes would multiply.
run --attacks badnet --defenses none,cleanclip --sweep attacks.badnet.poison_count=25,75,200,600
run --attacks blended --defenses none,cleanclip --sweep attacks.blended.poison_count=25,75,200,600
# CleanCLIP's in-modal weight λ2 (the paper: 0.5 to 8 on Blended; 0 is plain multimodal finetuning).
run --attacks badnet,blended --defenses none,cleanclip --sweep defenses.cleanclip.inmodal_weight=0,0.5,1,2,4,8
# The defender's clean pairs and the finetuning epochs.
run --attacks badnet,blended --defenses none,cleanclip --sweep data.clean_pairs=1000,2000,5000,10000
run --attacks badnet,blended --defenses none,cleanclip --sweep finetune.epochs=1,2,5,10

#!/usr/bin/env bash
# Issue 16's study after its record run (benchmarks/results/stages16-2026-12-04.md): every defense of the three
# stages on fmnist-tiny, three seeds, in parts that each fit one session of 2 cores (a machine's cache does not
# outlive its session, so no part counts on another's victims; each trains the victims it needs). Resumable within a
# part: rerun the same command after a kill.
#
#   bash benchmarks/stages16.sh PART OUT
#
#   badclip   BadCLIP (the attack built to survive CleanCLIP) against every defense, with the benign control's cells
#             (rows: benchmarks/results/rows/stages16-badclip-2026-12-02.csv)
#   sig       SIG against every defense, with the benign control's cells (shared with `badclip` in one OUT; rows, with
#             the badclip part's: benchmarks/results/rows/stages16-sig-2026-12-04.csv)
#   safeclip  SafeCLIP on the benign control and the six attacks whose other cells the record run did (the paper's
#             four, the watermark and triangles); trains their no-defense victims for the ASR reference
#             (rows: benchmarks/results/rows/stages16-safeclip-2026-12-02.csv)
#   record-post   the record run's post-training cells again (none, finetune, cleanclip, par on the same six attacks),
#                 whose rows were not kept, so that their verdicts rebuild from committed rows
#                 (rows: benchmarks/results/rows/stages16-record-post-2026-12-04.csv)
#   record-data   the record run's detector and RoCLIP cells again, on the same six attacks (each retrains a victim)
#                 (rows: benchmarks/results/rows/stages16-record-data-2026-12-05.csv)
#
# stripes is left out: it does not take on this preset (issue 15: no-defense ASR 0.012 to 0.018), so no defense can
# be scored against it. WORKERS (default 2) sets --workers; ACTION=validate prints the plan and its estimated time
# and trains nothing. When a part is done, commit OUT/results.csv as benchmarks/results/rows/stages16-PART-DATE.csv:
# `cleanbench leaderboard benchmarks/results/rows/stages16-*.csv --out LB` then rebuilds the study's tables. A part
# begun on another machine resumes from its committed rows: copy them to OUT/results.csv before the first command
# (e.g. `mkdir -p OUT && cp benchmarks/results/rows/stages16-safeclip-2026-12-02.csv OUT/results.csv`); the cells
# they hold are skipped and only the victims the others need are trained.
set -euo pipefail
usage="usage: stages16.sh badclip|sig|safeclip|record-post|record-data OUT"
part=${1:?$usage}
out=${2:?$usage}
every_defense=none,finetune,cleanclip,par,detect-kdist,detect-slof,detect-dao,roclip,safeclip
record_attacks=badnet,blended,wanet,label-consistent,watermark,triangles
run() { "${CLEANBENCH:-cleanbench}" "${ACTION:-run}" --preset fmnist-tiny --seeds 0,1,2 --workers "${WORKERS:-2}" \
    --out "$out" "$@"; }
case "$part" in
    badclip) run --attacks badclip --defenses "$every_defense" ;;
    sig) run --attacks sig --defenses "$every_defense" ;;
    safeclip) run --attacks "$record_attacks" --defenses none,safeclip ;;
    record-post) run --attacks "$record_attacks" --defenses none,finetune,cleanclip,par ;;
    record-data) run --attacks "$record_attacks" --defenses none,detect-kdist,detect-slof,detect-dao,roclip ;;
    *) echo "unknown part '$part': badclip, sig, safeclip, record-post or record-data" >&2; exit 2 ;;
esac

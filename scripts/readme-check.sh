#!/usr/bin/env bash
# Checks that the README's quoted outputs are what the current binary prints:
#
#   bash scripts/readme-check.sh                  # command outputs and the in-sample validation columns
#   bash scripts/readme-check.sh --cross-validate # also the cross-validated columns (minutes on 2 cores)
#
# 1. Every figure line the README quotes inside a ``` block (`step time ...`, `breakdown: ...`,
#    `kernels: ...`, `engine: ...`, `Chosen: ...`, the search's `[info]` counts, the `flavors` rows,
#    and the `smi` device rows and memory line) must be a line that
#    `scripts/readme-figures.sh` prints, whole (a `Chosen:` sentence the README quotes must be one the
#    script prints in full; an `smi` device row is compared on its memory and utilization columns, since
#    the script keeps only the first and last device of a table).
# 2. The validation table (*Predictions against measurements*): each truth file's row count and its
#    in-sample MAPE columns must be what `moai-compile validate costmodel/data/truth/*.jsonl` prints;
#    with --cross-validate, the cross-validated columns what `... --cross-validate` prints.
#
# Prose figures are not checked: rerun readme-figures.sh and compare by eye after a cost-model change.
# MOAI=path/to/moai-compile picks the binary (default ./target/release/moai-compile, built if missing).
# Exits 1 and lists every mismatch; 0 when all match.
set -euo pipefail

if [[ -n ${MOAI:-} && $MOAI == */* && $MOAI != /* ]]; then MOAI=$PWD/$MOAI; fi
cd "$(dirname "$0")/.."
cross=0
for arg in "$@"; do
	case $arg in
	--cross-validate) cross=1 ;;
	*)
		echo "error: unknown argument '$arg' (expected --cross-validate)" >&2
		exit 2
		;;
	esac
done
if [[ -z ${MOAI:-} ]]; then
	MOAI=./target/release/moai-compile
	[[ -x $MOAI ]] || cargo build --release -q -p moai-compiler --bin moai-compile
fi
export MOAI

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
miss() {
	printf 'MISMATCH %s\n' "$1"
	fail=1
}

# --- 1. quoted command outputs ------------------------------------------------------------------
bash scripts/readme-figures.sh >"$tmp/figs.txt"
# The last three columns of the printed smi device rows (memory usage, total memory, utilization).
grep -E '^\|  [0-9]' "$tmp/figs.txt" | awk -F'|' '{ print $(NF-3) "|" $(NF-2) "|" $(NF-1) }' |
	sort -u >"$tmp/smi.txt"
checked=0
in_block=0
lineno=0
while IFS= read -r line; do
	lineno=$((lineno + 1))
	if [[ $line == '```'* ]]; then
		in_block=$((1 - in_block))
		continue
	fi
	((in_block)) || continue
	if [[ $line =~ ^[0-9A-Za-z.]+\.[0-9]+GB\ +(\*\ +)?[0-9]+GB\  ]]; then
		# A row of the `flavors` table.
		checked=$((checked + 1))
		grep -qxF -- "$line" "$tmp/figs.txt" || miss "README.md:$lineno: $line"
		continue
	fi
	case $line in
	"step time "* | "breakdown: "* | "kernels: "* | "engine: "*)
		checked=$((checked + 1))
		grep -qxF -- "$line" "$tmp/figs.txt" || miss "README.md:$lineno: $line"
		;;
	"[info] The number "* | "[info] Enumerated "* | "[info] Pruned "* | "[info] Compiled "* | \
		"Total Memory: "* | "memory per device: "* | "* current flavor: "*)
		checked=$((checked + 1))
		grep -qxF -- "$line" "$tmp/figs.txt" || miss "README.md:$lineno: $line"
		;;
	"[info] imported "*)
		# The import time varies run to run; the script leaves it out.
		checked=$((checked + 1))
		grep -qxF -- "$(sed -E 's/ import_ms=[0-9.]+//' <<<"$line")" "$tmp/figs.txt" ||
			miss "README.md:$lineno: $line"
		;;
	"Chosen: "*)
		checked=$((checked + 1))
		grep -qxF -- "$line" "$tmp/figs.txt" || miss "README.md:$lineno: ${line:0:160}..."
		;;
	"|  "[0-9]*)
		checked=$((checked + 1))
		cols=$(awk -F'|' '{ print $(NF-3) "|" $(NF-2) "|" $(NF-1) }' <<<"$line")
		grep -qxF -- "$cols" "$tmp/smi.txt" || miss "README.md:$lineno: $line"
		;;
	esac
done <README.md
printf 'checked %d quoted output lines against scripts/readme-figures.sh\n' "$checked"

# --- 2. the validation table ----------------------------------------------------------------------
# "MAPE costmodel/data/truth/F.jsonl (N rows): peak_memory a%, step_time b%, tflops c%" -> "F.jsonl N st pm tf"
mape_cells() {
	grep -E '^MAPE ' | sed -E 's#^MAPE (costmodel/data/truth/)?##' | awk '
		{
			file = $1; rows = "-"
			if ($2 ~ /^\(/) { rows = substr($2, 2) }
			st = "–"; pm = "–"; tf = "–"
			for (i = 2; i <= NF; i++) {
				v = $(i + 1); sub(/,$/, "", v)
				if ($i == "step_time") st = v
				if ($i == "peak_memory") pm = v
				if ($i == "tflops") tf = v
			}
			sub(/:$/, "", file)
			print file, rows, st, pm, tf
		}'
}
"$MOAI" validate costmodel/data/truth/*.jsonl 2>/dev/null | mape_cells >"$tmp/in_sample.txt"
if ((cross)); then
	"$MOAI" validate costmodel/data/truth/*.jsonl --cross-validate 2>/dev/null | mape_cells >"$tmp/cross.txt"
fi
[[ -s $tmp/in_sample.txt ]] || miss "validate printed no MAPE lines"
# README rows: | `F.jsonl` (note) | N | st cv | st is | pm cv | pm is | tf cv | tf is |
table_rows=0
while IFS= read -r line; do
	[[ $line =~ ^\|\ (\`([a-z0-9_]+\.jsonl)\`[^|]*|all)\ \|\ ([0-9]+)\ \|(.*)$ ]] || continue
	file=${BASH_REMATCH[2]:-all}
	rows=${BASH_REMATCH[3]}
	IFS='|' read -r -a c <<<"${BASH_REMATCH[4]}"
	cells=()
	for x in "${c[@]}"; do
		x=${x// /}
		[[ -n $x ]] && cells+=("$x")
	done
	table_rows=$((table_rows + 1))
	want=$(awk -v f="$file" '$1 == f' "$tmp/in_sample.txt")
	if [[ -z $want ]]; then
		miss "validation table: $file is not a truth file validate reports"
		continue
	fi
	read -r _ wrows wst wpm wtf <<<"$want"
	[[ $file == all || $wrows == "$rows" ]] || miss "validation table: $file has $wrows rows, README says $rows"
	got="${cells[1]} ${cells[3]} ${cells[5]}"
	[[ $got == "$wst $wpm $wtf" ]] ||
		miss "validation table: $file in-sample (step, memory, TFLOP/s) is $wst $wpm $wtf, README says $got"
	if ((cross)); then
		read -r _ _ cst cpm ctf <<<"$(awk -v f="$file" '$1 == f' "$tmp/cross.txt")"
		got="${cells[0]} ${cells[2]} ${cells[4]}"
		[[ $got == "$cst $cpm $ctf" ]] ||
			miss "validation table: $file cross-validated (step, memory, TFLOP/s) is $cst $cpm $ctf, README says $got"
	fi
done <README.md
# Every truth file has its row.
while read -r file _; do
	[[ $file == all ]] && continue
	grep -qF -- "| \`$file\`" README.md || miss "validation table: no row for $file"
done <"$tmp/in_sample.txt"
printf 'checked %d validation table rows (%s)\n' "$table_rows" \
	"$( ((cross)) && echo 'in-sample and cross-validated' || echo 'in-sample; --cross-validate checks the other columns')"
exit $fail

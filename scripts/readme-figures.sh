#!/usr/bin/env bash
# Rerun the README's figure-producing commands so stale figures show up in a diff:
#
#   bash scripts/readme-figures.sh > /tmp/figs.txt
#
# then compare /tmp/figs.txt with README.md. Each command is printed as a header line
# `## moai-compile ...` (as the README writes it; `out/...` stands for a temporary directory),
# followed by the output lines that carry the figures the README quotes (step time, tokens/s,
# peak memory, MFU, the breakdown, the first 300 characters of the `Chosen:` sentence and its
# `Searched ...` counts (the whole sentence for the main job, which the README quotes in full),
# smi rows, the `error:` line of a refusal, ...). Commands the README gives only in words (the
# plans behind the fp8, offload, MoE and MFU figures) are spelled out with the flags of the tests
# that print them. Run from the repository root; MOAI=path/to/moai-compile picks another binary.
#
# Left out on purpose: `validate ... --cross-validate` (about 5 minutes on 2 cores) and the in-sample
# `validate` table over all files (one file's rows are printed for the long-sequence figures), the
# test and benchmark runs, wall-clock measurements, `use` (interactive, writes the config file) and `--emit hsaco` (needs the `mlir` build). Takes under a minute.
set -euo pipefail

# A relative MOAI given by the caller is relative to the caller's directory.
if [[ -n ${MOAI:-} && $MOAI == */* && $MOAI != /* ]]; then MOAI=$PWD/$MOAI; fi
cd "$(dirname "$0")/.."
MOAI=${MOAI:-./target/release/moai-compile}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/out"

# The README's `smi`/`flavors` outputs come from a config file naming the default flavor; use a
# private one so neither the user's config file nor MOAI_FLAVOR changes what is printed.
unset MOAI_FLAVOR
export MOAI_CONFIG="$tmp/config.toml"
printf 'flavor = "4xLarge.2048GB"\ngpu = "mi250"\n' >"$MOAI_CONFIG"

# Figure lines of plan/estimate output; FULL=1 keeps the whole `Chosen:` sentence.
plan_figures() {
	local line
	while IFS= read -r line; do
		case $line in
		"step time "* | "breakdown:"* | "kernels:"* | "engine:"* | "DOES NOT FIT"* | "wrote "*"plan.json")
			printf '%s\n' "${line//"$tmp"\//}"
			;;
		"Chosen:"*)
			if [[ ${FULL:-} == 1 ]]; then printf '%s\n' "$line"; else printf '%s\n' "${line:0:300}"; fi
			# The search counts are the sentence's last one.
			if [[ ${FULL:-} != 1 && $line == *" Searched "* ]]; then printf 'Searched %s\n' "${line##* Searched }"; fi
			;;
		*"fits nowhere"* | "error:"*)
			printf '%s\n' "${line:0:300}"
			;;
		esac
	done
}

# Selected fields of `--json` output (the table columns the text output does not print).
json_fields() {
	local want=$1
	# First occurrence of each key: the step's own figures, not a stage's.
	grep -oE "\"($want)\": ?[-0-9.eE+]+" | tr -d '" ' | awk -F: '!seen[$1]++' | tr '\n' ' ' | sed 's/ $/\n/' || true
}

# smi: the accelerator row, the first and last device rows, the Total Memory line.
smi_figures() {
	awk '/MoAI Accelerator/ { print; next }
	     /^\|  [0-9]/ { if (!first) { print; first = 1 } last = $0; next }
	     /^Total Memory:/ { if (last) print last; print }'
}

everything() { cat; }

# run FILTER ARGS...: the header, then FILTER over the command's stdout (and the log's
# `[info] Compiled ...` count, the README's "partitioned"); if the command fails,
# `FAILED: ...` and its `error:` line (a refusal such as "fits nowhere" carries figures too).
run() {
	local filter=$1 out
	shift
	local shown="moai-compile $*"
	shown=${shown//"$tmp"\//}
	printf '## %s\n' "$shown"
	if out=$("$MOAI" "$@" 2>"$tmp/stderr"); then
		printf '%s\n' "$out" | "$filter"
		# The search's partitioned ("compiled") count is only in the log.
		if [[ $filter == plan_figures ]]; then grep -m1 '^\[info\] Compiled ' "$tmp/stderr" || true; fi
	else
		printf 'FAILED: %s\n' "$shown"
		grep -m1 '^error:' "$tmp/stderr" | cut -c1-400 || true
	fi
}

L13B=models/llama2-13b.onnx
L70B=models/configs/llama2-70b/config.json
L8B=models/configs/llama3-8b/config.json

# --- First steps ----------------------------------------------------------------------------
run everything flavors --gpu mi250
run smi_figures smi
run plan_figures $L13B --out "$tmp/out/llama2-13b"
run smi_figures smi "$tmp/out/llama2-13b"

# --- What the main job prints (with the counts of its log lines, which go to stderr) ---------
main=($L13B --flavor 4xLarge.2048GB --batch-size 256 --seq-len 1024)
printf '## moai-compile %s\n' "${main[*]}"
if out=$("$MOAI" "${main[@]}" 2>"$tmp/main.log"); then
	grep -E '^\[info\] (imported|The number|Enumerated|Pruned|Compiled)' "$tmp/main.log" |
		sed -E 's/ import_ms=[0-9.]+//' || true
	printf '%s\n' "$out" | FULL=1 plan_figures
else
	printf 'FAILED: moai-compile %s\n' "${main[*]}"
fi
run plan_figures "${main[@]}" --exhaustive
run plan_figures estimate "${main[@]}" --recompute full --zero 3

# --- Model specs: total / active parameters ---------------------------------------------------
for m in mixtral-8x7b deepseek-v3; do
	run everything inspect models/configs/$m | grep -E '^## |^FAILED|^(model|parameters|active/token) ' || true
done

# --- GPUs and FP8: Llama-2-70B, batch 128 x 4096 on 64 H100 (test fp8_plan_of_llama2_70b_...) ----
run plan_figures plan models/configs/llama2-70b --gpu h100 --devices 64 --batch-size 128 --seq-len 4096
run plan_figures plan models/configs/llama2-70b --gpu h100 --devices 64 --batch-size 128 --seq-len 4096 --precision fp8

# --- Optimizer offload: a 42B Llama on 8 A100 (test a_model_that_fits_nowhere_fits_with_...) ---
big='llama:layers=60,hidden=8192,heads=64,kv_heads=8,ffn=22016,vocab=32000'
run plan_figures plan "$big" --gpu a100 --devices 8 --batch-size 64 --seq-len 2048
run plan_figures plan "$big" --gpu a100 --devices 8 --batch-size 64 --seq-len 2048 --offload optimizer
printf '## moai-compile plan %s --gpu a100 --devices 8 --batch-size 64 --seq-len 2048 --offload optimizer --json  (offload_s)\n' "$big"
"$MOAI" plan "$big" --gpu a100 --devices 8 --batch-size 64 --seq-len 2048 --offload optimizer --json 2>/dev/null |
	json_fields 'offload_s|optimizer_s' || printf 'FAILED: offload_s\n'

# --- Activation offload: Llama-3-8B, batch 8 x 16,384 on 8 H100 -------------------------------
pinned=(plan models/configs/llama3-8b --gpu h100 --devices 8 --batch-size 8 --seq-len 16384 --tp 1 --pp 1 --cp 1 --recompute none)
run plan_figures "${pinned[@]}"
run plan_figures "${pinned[@]}" --offload activations
printf '## moai-compile %s --offload activations --json  (offload_activations, offload_s)\n' "${pinned[*]}"
"$MOAI" "${pinned[@]}" --offload activations --json 2>/dev/null |
	json_fields 'offload_activations|offload_s' || printf 'FAILED: offload_s\n'
run plan_figures plan models/configs/llama3-8b --gpu h100 --devices 8 --batch-size 8 --seq-len 16384

# --- Hybrid sharding: the slow64.json table ---------------------------------------------------
printf '{"gpu": "h100", "devices": 64, "devices_per_server": 8, "links": {"network": {"bytes_per_s": 3.125e9, "latency_s": 15e-6}}}\n' >"$tmp/slow64.json"
l3='llama:layers=32,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=128256,rope_theta=500000,eps=1e-5'
hsdp=(estimate "$l3" --batch-size 64 --seq-len 4096 --zero 3 --recompute full --micro-batch-size 1)
for shard in "" 8 16 32; do
	args=("${hsdp[@]}" --cluster-file "$tmp/slow64.json" --engine torchtitan ${shard:+--dp-shard $shard})
	run plan_figures "${args[@]}"
	"$MOAI" "${args[@]}" --json 2>/dev/null | json_fields 'zero3_gather_s|dp_comm_s' || printf 'FAILED: --json\n'
done
run plan_figures "${hsdp[@]}" --gpu h100 --devices 64 --engine torchtitan
run plan_figures "${hsdp[@]}" --gpu h100 --devices 64 --engine torchtitan --dp-shard 8
run plan_figures "${hsdp[@]}" --cluster-file "$tmp/slow64.json"

# --- Pipeline schedules and stages ------------------------------------------------------------
zb=(estimate 'llama:layers=16,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000' --gpu h100 --devices 8 --batch-size 16 --seq-len 2048 --pp 4)
run plan_figures "${zb[@]}" --schedule 1f1b
run plan_figures "${zb[@]}" --schedule zb-h1
long=('llama:layers=36,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=32000' --gpu h100 --devices 4 --batch-size 32 --seq-len 4096 --pp 4 --micro-batch-size 2 --zero 0)
run plan_figures estimate "${long[@]}" --recompute none
run plan_figures estimate "${long[@]}" --recompute full
run plan_figures estimate "${long[@]}" --recompute full --stage-recompute full,none,none,none
run plan_figures plan "${long[@]}" --recompute none,full --schedule 1f1b --stage-recompute mixed

# --- Sweep ------------------------------------------------------------------------------------
run everything sweep $L13B --flavors Small.64GB..8xLarge.4096GB

# --- Search speed: Llama-3.1-405B on 1,024 H100 -----------------------------------------------
run plan_figures plan models/configs/llama3.1-405b/config.json --gpu h100 --devices 1024 --seq-len 8192 --batch-size 2048
run plan_figures plan models/configs/llama3.1-405b/config.json --gpu h100 --devices 1024 --seq-len 8192 --batch-size 2048 --exhaustive

# --- Mixture of experts: Mixtral-8x7B on 64 H100 ----------------------------------------------
run plan_figures plan models/configs/mixtral-8x7b --gpu h100 --devices 64 --batch-size 256 --seq-len 4096

# --- Megatron-LM on Hopper: NeMo's Llama-2-7B recipe ------------------------------------------
run plan_figures estimate "llama:layers=32,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000" --gpu h100 --devices 8 \
	--batch-size 128 --seq-len 4096 --dp 8 --tp 1 --pp 1 --micro-batch-size 1 --recompute none --zero 1 --engine megatron

# --- MFU table: Llama-2-70B, 64 devices, 512 x 4096 (test mfu) --------------------------------
for gpu in a100 h100 mi250 mi300x; do
	run plan_figures plan $L70B --gpu $gpu --devices 64 --batch-size 512 --seq-len 4096 --recompute full
	run plan_figures plan $L70B --gpu $gpu --devices 64 --batch-size 512 --seq-len 4096
done
printf '## moai-compile plan %s --gpu a100 --devices 64 --batch-size 512 --seq-len 4096 --json  (ZeRO-3 traffic)\n' $L70B
"$MOAI" plan $L70B --gpu a100 --devices 64 --batch-size 512 --seq-len 4096 --json 2>/dev/null |
	json_fields 'compute_s|zero3_gather_s|dp_comm_s|exposed_comm_s' || printf 'FAILED: --json\n'

# --- Long context: Llama-3-8B at 131,072 tokens on 64 H100 ------------------------------------
run plan_figures $L8B --gpu h100 --devices 64 --batch-size 16 --seq-len 131072
run plan_figures $L8B --gpu h100 --devices 64 --batch-size 16 --seq-len 131072 --cp 1

# --- Long context: NeMo's Llama 2 7B long-sequence rows (nemo_long_sequence_h100.jsonl) --------
# The `kernels:` line gives moai's attention seconds per step, the same in every row of the table;
# with `validate`'s predicted and measured step times they give the README's per-row attention factors.
nemo7b='llama:layers=32,hidden=4096,heads=32,kv_heads=32,ffn=11008,vocab=32000'
nemo=(--gpu h100 --precision fp8 --micro-batch-size 1 --recompute none --zero 1 --engine megatron --overlap tp-comm=off)
run plan_figures estimate "$nemo7b" "${nemo[@]}" --devices 4 --batch-size 1024 --seq-len 4096 --dp 4 --tp 1 --pp 1
run plan_figures estimate "$nemo7b" "${nemo[@]}" --devices 1024 --batch-size 4 --seq-len 1048576 --dp 4 --tp 8 --pp 1 --cp 32 --sequence-parallel
printf '## moai-compile validate costmodel/data/truth/nemo_long_sequence_h100.jsonl  (step times)\n'
"$MOAI" validate costmodel/data/truth/nemo_long_sequence_h100.jsonl 2>/dev/null | grep -E 'step_time_s|MAPE' || printf 'FAILED: validate\n'

# The torchtitan paper's 405B 4D rows at cp 1, 2, 4 and 8 (long_context_torchtitan.jsonl, costed on the
# FSDP stack; the CLI takes these configurations with --engine torchtitan, the same attention kernel and
# ring, but run as the export runs it, without torch.compile, so its ring transfers overlap where the
# compiled rows' do not): the peaks the README sets beside the reserved memory the paper reports.
t405=(llama:layers=126,hidden=16384,heads=128,kv_heads=8,ffn=53248,vocab=128256,rope_theta=500000 --gpu h100-hbm2e
	--devices 512 --precision fp8 --tp 8 --pp 8 --micro-batch-size 1 --recompute full --zero 3 --sequence-parallel
	--schedule 1f1b --engine torchtitan)
run plan_figures estimate "${t405[@]}" --batch-size 32 --seq-len 65536 --dp 4 --cp 2
run plan_figures estimate "${t405[@]}" --batch-size 8 --seq-len 262144 --dp 1 --cp 8
run plan_figures estimate "${t405[@]}" --batch-size 64 --seq-len 32768 --dp 8 --cp 1
run plan_figures estimate "${t405[@]}" --batch-size 16 --seq-len 131072 --dp 2 --cp 4

# --- Mixed precision as the engine runs it: MPT-13B at 16K on 8 A100 (LLM Foundry's recipe), the
# activations of one device under full recomputation (GiB)
mpt13=("gpt:layers=40,hidden=5120,heads=40,vocab=50368,seq=16384" --gpu a100 --devices 8 --batch-size 72
	--seq-len 16384 --dp 8 --tp 1 --pp 1 --micro-batch-size 3 --recompute full --zero 3 --engine fsdp)
printf '## moai-compile estimate %s --json  (activations of stage 0, GiB)\n' "${mpt13[*]}"
"$MOAI" estimate "${mpt13[@]}" --json 2>/dev/null | grep -oE '"activations_bytes": ?[0-9.e+]+' | head -1 |
	awk -F: '{ printf "%.1f\n", $2 / 1073741824 }' || printf 'FAILED: --json\n'
printf '## moai-compile validate costmodel/data/truth/long_context_torchtitan.jsonl  (step times)\n'
"$MOAI" validate costmodel/data/truth/long_context_torchtitan.jsonl 2>/dev/null | grep -E 'step_time_s|MAPE' || printf 'FAILED: validate\n'

# --- Interleaved memory: NVIDIA's GPT-3 175B recipe, peak per pipeline stage (GiB) -------------
gpt175=(gpt:layers=96,hidden=12288,heads=96,vocab=50688 --gpu h100 --devices 128 --batch-size 256 --seq-len 2048
	--dp 4 --tp 4 --pp 8 --micro-batch-size 1 --recompute none --zero 1 --sequence-parallel --schedule interleaved:12 --engine megatron)
printf '## moai-compile estimate %s --json  (stage peaks, GiB)\n' "${gpt175[*]}"
"$MOAI" estimate "${gpt175[@]}" --json 2>/dev/null | grep -oE '"peak_bytes": ?[0-9]+' |
	awk -F: '{ printf "%.1f ", $2 / 1073741824 } END { print "" }' || printf 'FAILED: --json\n'

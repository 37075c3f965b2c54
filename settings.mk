# The settings of the cycle and how make keeps them: included by the Makefile, whose first screen is the cycle.
#
# How it works, in three parts:
# - Settings. Each setting below has a default (?=). A cycle goal (prep, roundR, pseudoR, ensemble, kaggle, ...)
#   records the RECORDED ones in WORK/.settings/run/, one file each; a later call that leaves one out takes the
#   recorded value, one that gives it takes the given value. Each cycle goal prints the settings (four lines:
#   each one, and whether it was given, recorded or the default).
# - Stamps. A step depends on a stamp: a small file in WORK/.settings holding the settings that change its result,
#   rewritten only when they change. A changed setting reruns exactly the steps that depend on it; THREADS,
#   DEVICE, GPUS and PY belong to the machine, change no result and are in no stamp.
# - The environment. With the default PY, each step first installs what it needs into .venv (SETUP; the rules
#   are at the end of the Makefile); PY=python uses an existing environment (Kaggle, Colab).
# make -n (and -q) write nothing: no record, no stamp.

PY      ?= .venv/bin/python
WORK    ?= work
ifneq ($(words $(WORK)),1)
$(error WORK may not contain spaces ("$(WORK)"); DATA may)
endif

# A run's settings stay with it. A cycle goal records the settings below in WORK/.settings/run/ (one file each); a
# later call that leaves one out takes the recorded value, one that gives it (on the command line or in the
# environment) takes the given value, records it and reruns what it changes. THREADS, DEVICE, GPUS and PY belong to
# the machine, not the run, and are not recorded. make -n (and -q) write nothing: no record, no stamp.
RECORDED := DATA MODELS EPOCHS PRETRAINED TRAIN_ARGS PREP_ARGS PL_NORM PL_MEMBERS ROUNDS TEACHER TEACHER_WEIGHT \
	TEACHER_MODEL TEACHER_LABELS DISTILL TEACHER_VOTE MAX_ROUNDS PL_POWER PP_KERNEL PP_BOOST PP_TTA
RUN_SETTINGS := $(WORK)/.settings/run
DRY_RUN := $(findstring n,$(firstword -$(MAKEFLAGS)))$(findstring q,$(firstword -$(MAKEFLAGS)))
define recall
ifeq ($$(origin $(1)),undefined)
ifneq ($$(shell test -f $(RUN_SETTINGS)/$(1) && echo yes),)
$(1) := $$(shell cat $(RUN_SETTINGS)/$(1))
$(1).from := recorded
endif
endif
endef
$(foreach v,$(RECORDED),$(eval $(call recall,$(v))))

# the steps that read a finished ensemble, called in a WORK that has none: one line, and nothing starts (no prep)
ifneq ($(filter kaggle timing submission $(WORK)/submission.csv,$(MAKECMDGOALS)),)
ifeq ($(filter ensemble $(WORK)/ensemble/manifest.json,$(MAKECMDGOALS))$(wildcard $(WORK)/ensemble/manifest.json),)
$(error no trained ensemble in $(WORK) ($(WORK)/ensemble/manifest.json): run make ensemble first, or pass WORK=<the folder of a finished run>)
endif
endif

DATA    ?= data/birdclef-2024
MODELS  ?= models.csv
EPOCHS  ?= 50
THREADS ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
DEVICE  ?= auto
TRAIN_ARGS ?=
PREP_ARGS  ?=
PL_NORM ?= floor
# the models of a round's ensemble that pseudo-label (comma-separated names: model1,model3); empty: all of them
PL_MEMBERS ?=
# pseudo-label rounds before the final ensemble (the stop rule): the write-up's 3; make demo's 2 (bench/decide.py);
# auto: decided by the site's held-out labelled soundscapes (site_score.py rounds; a dataset with
# train_soundscapes_labels.csv): another round while one beats the last beyond noise, then the best-scoring round
ROUNDS ?= 3
# ROUNDS=auto trains at most this many rounds (1 to 9)
MAX_ROUNDS ?= 3
# the pseudo labels raised to this power before they are mixed in (1: as pseudo.py wrote them; above 1 sharpens:
# confident windows count more): one value for every round, or one per round from round 1 (PL_POWER=1,1.54,1.82),
# the last one for the rounds after the list
PL_POWER ?= 1
# the final ensemble's post-processing (make ensemble writes it into WORK/ensemble/postprocessing.json, which infer.py
# and the Kaggle cell apply): PP_KERNEL an odd-length smoothing kernel (empty: the write-up's 0.5,1,0.5), PP_BOOST
# each class's rows moved toward the file's maximum by this share, PP_TTA the share of the windows shifted by 2.5 s
PP_KERNEL ?=
PP_BOOST ?= 0
PP_TTA ?= 0
# the backbones' starting weights: timm (timm's: the write-up's ImageNet/JFT ones for its B0, downloaded once), none
# (random init), a file, or a folder of <backbone>.pth files (make weights writes one per backbone of MODELS)
PRETRAINED ?= timm
GPUS ?=
# TEACHER=FILE (make teacher writes $(WORK)/teacher.npz: a teacher's labels of the cache's windows, and their
# embeddings beside it): round 1 trains on its labels as its pseudo labels ("round 0"), and pseudo1/pseudo2 blend
# them in for the classes the teacher covers. The teacher is BirdNET V2.4, or TEACHER_MODEL (an ONNX file with
# Perch v2's signature) with TEACHER_LABELS (its labels file)
TEACHER ?=
TEACHER_WEIGHT ?= 1
TEACHER_MODEL ?=
TEACHER_LABELS ?=
# DISTILL=W: every round's models also learn the teacher's embedding of each sample (loss 1 - cosine, weight W,
# added to the classification loss); 0: off. Needs TEACHER
DISTILL ?= 0
# TEACHER_VOTE=W: infer.py (make submission, timing, kaggle) blends TEACHER_MODEL's probabilities of the classes it
# covers with the ensemble's, weight W; 0: no vote
TEACHER_VOTE ?= 0
# what soup.py keeps of a model's saved epochs once its soup is written: all (the default), or soup (only the
# epochs the soup uses: for a small disk such as Kaggle's 20 GB; the others are deleted)
KEEP_EPOCHS ?= all

# GPUS=0,1,2,3: a round's models train side by side, as many jobs as GPUs; each job claims a GPU that no other
# job holds (devices.claim_gpu) and gets its share of THREADS, for training and for its soup
comma := ,
N_GPUS := $(words $(subst $(comma), ,$(GPUS)))
JOB_THREADS := $(THREADS)
ifneq ($(GPUS),)
MAKEFLAGS += -j$(N_GPUS)
JOB_THREADS := $(shell echo $$(( $(THREADS) / $(N_GPUS) > 0 ? $(THREADS) / $(N_GPUS) : 1 )))
endif

# What each step installs into .venv (only when PY is the default one): the cycle, the runtime, the speed extras,
# the report's plotting library and prep's speech detector; make test adds the test tools and the teacher's; make teacher the teacher's
VENV := $(filter .venv/bin/python,$(PY))
SETUP := $(if $(VENV),.venv/.installed,)
SETUP_TEST := $(if $(VENV),.venv/.installed-test,)
SETUP_TEACHER := $(if $(VENV),.venv/.installed-teacher,)
IDS   := $(shell grep -v '^\#' $(MODELS) 2>/dev/null | tail -n +2 | cut -d, -f1)
# the table's longest window in seconds (its optional window_seconds column; 5 without it): what prep caches
CACHE_SECONDS := $(or $(shell awk -F, '/^ *\#/ {next} !h {for (i = 1; i <= NF; i++) if ($$i ~ /^ *window_seconds *$$/) \
	c = i; h = 1; next} c && $$c + 0 > m {m = $$c + 0} END {print (m > 5 ? m : 5)}' $(MODELS) 2>/dev/null),5)
# the cache may live elsewhere (a larger or faster disk: CACHE=/kaggle/temp/cache); prep rebuilds it when missing
CACHE ?= $(WORK)/cache
CACHED := $(CACHE)/train_rows.csv
# the teacher's vote at inference: its ONNX file and the mapping make teacher wrote beside TEACHER
TEACHER_VOTE_ARGS := $(if $(and $(TEACHER_MODEL),$(filter-out 0 0.0,$(TEACHER_VOTE))),--teacher-model \
	"$(TEACHER_MODEL)" --teacher-mapping $(basename $(or $(TEACHER),$(WORK)/teacher.npz)).mapping.csv \
	--teacher-vote $(TEACHER_VOTE))
# distillation: the teacher's embeddings, beside its labels file (teacher.py writes both)
DISTILLING := $(if $(and $(TEACHER),$(filter-out 0 0.0,$(DISTILL))),yes)
TEACHER_EMBEDDINGS := $(if $(TEACHER),$(basename $(TEACHER)).embeddings.npz)
# the pseudo labels round R trains on: pseudoR.npz is made by round R's ensemble and trains round R + 1; round 1
# trains on the teacher's labels where TEACHER is given, else on none
LABELS_FOR_ROUND_1 := $(TEACHER)
ALL_ROUNDS := 1 2 3 4 5 6 7 8 9
$(foreach r,$(wordlist 2,9,$(ALL_ROUNDS)),$(eval LABELS_FOR_ROUND_$(r) := $(WORK)/pseudo$(word $(r),0 $(ALL_ROUNDS)).npz))
# round R's power of its pseudo labels: PL_POWER's R-th value, else its last
PL_POWER_LIST := $(subst $(comma), ,$(PL_POWER))
pl_power_of = $(or $(word $(1),$(PL_POWER_LIST)),$(lastword $(PL_POWER_LIST)))
# the rounds a run plans: ROUNDS, or MAX_ROUNDS for ROUNDS=auto
PLANNED_ROUNDS := $(if $(filter auto,$(ROUNDS)),$(MAX_ROUNDS),$(ROUNDS))
ifeq ($(filter $(ROUNDS),$(ALL_ROUNDS) auto),)
$(error ROUNDS must be 1 to 9, or auto, not "$(ROUNDS)")
endif
ifeq ($(filter $(MAX_ROUNDS),$(ALL_ROUNDS)),)
$(error MAX_ROUNDS must be 1 to 9, not "$(MAX_ROUNDS)")
endif
# the numbers of PL_POWER and PP_*: one line, before anything runs
NUMBERS_WRONG := $(shell awk -v power='$(PL_POWER)' -v rounds='$(PLANNED_ROUNDS)' -v kernel='$(PP_KERNEL)' \
	-v boost='$(PP_BOOST)' -v tta='$(PP_TTA)' 'function num(x) { return x ~ /^([0-9]+[.]?[0-9]*|[.][0-9]+)$$/ } \
	BEGIN { n = split(power, p, ","); for (i = 1; i <= n; i++) if (!num(p[i]) || p[i] <= 0) { \
	print "PL_POWER must be positive numbers separated by commas, not \"" power "\""; exit } \
	if (n > rounds) { print "PL_POWER gives " n " values, one per round, and the run has " rounds " rounds"; exit } \
	k = split(kernel, w, ","); s = 0; for (i = 1; i <= k; i++) { if (!num(w[i])) { \
	print "PP_KERNEL must be weights >= 0 separated by commas, not \"" kernel "\""; exit } s += w[i] } \
	if (k && (k % 2 == 0 || s <= 0)) { print "PP_KERNEL must have an odd number of weights, not " k " (" kernel ")"; \
	exit } if (!num(boost) || boost > 1) { print "PP_BOOST must be in [0, 1], not \"" boost "\""; exit } \
	if (!num(tta) || tta > 1) { print "PP_TTA must be in [0, 1], not \"" tta "\""; exit } }')
ifneq ($(NUMBERS_WRONG),)
$(error $(NUMBERS_WRONG))
endif

# Settings reach make through stamps: one small file per step holding the settings that change its result,
# rewritten only when they change (a new stamp is dated 1970: "as before"), so a changed EPOCHS, TRAIN_ARGS,
# PRETRAINED, models-table row, PL_NORM or PREP_ARGS reruns exactly the steps that depend on it. THREADS and
# DEVICE change no result and are in no stamp. $(call stamp,NAME,TEXT) is what a rule depends on: the stamp's path
# once written; under make -n nothing is written, and it is the path when unchanged, nothing when there is none
# yet (as before), FORCE when changed.
STAMPS := $(WORK)/.settings
squote := '
quote = '$(subst $(squote),$(squote)\$(squote)$(squote),$(1))'
ifeq ($(DRY_RUN),)
stamp = $(shell mkdir -p $(STAMPS) && printf '%s\n' $(call quote,$(2)) > $(STAMPS)/$(1).new && \
	if [ ! -f $(STAMPS)/$(1) ]; then mv $(STAMPS)/$(1).new $(STAMPS)/$(1) && touch -d @0 $(STAMPS)/$(1); \
	elif cmp -s $(STAMPS)/$(1).new $(STAMPS)/$(1); then rm $(STAMPS)/$(1).new; \
	else mv $(STAMPS)/$(1).new $(STAMPS)/$(1); fi; echo $(STAMPS)/$(1))
record = $(shell mkdir -p $(RUN_SETTINGS) && printf '%s' $(call quote,$($(1))) > $(RUN_SETTINGS)/$(1).new && \
	if cmp -s $(RUN_SETTINGS)/$(1).new $(RUN_SETTINGS)/$(1); then rm $(RUN_SETTINGS)/$(1).new; \
	else mv $(RUN_SETTINGS)/$(1).new $(RUN_SETTINGS)/$(1); fi)
else
stamp = $(shell f=$(STAMPS)/$(1); if [ ! -f $$f ]; then :; elif printf '%s\n' $(call quote,$(2)) | cmp -s - $$f; \
	then echo $$f; else echo FORCE; fi)
record =
endif
MODEL_ROW = $(shell grep -E '^$(1) *,' $(MODELS))
# where a setting's value came from, for the line each cycle goal prints
from = $(if $(filter command line environment override,$(origin $(1))),given,$(or $($(1).from),default))
show = $(1)=$(if $(or $(findstring $(space),$($(1))),$(if $($(1)),,empty)),"$($(1))",$($(1))) ($(call from,$(1)))
space := $(subst ,, )
CYCLE_GOALS := prep round% pseudo% ensemble kaggle submission timing teacher $(WORK)/%
ifneq ($(filter $(CYCLE_GOALS),$(MAKECMDGOALS)),)
ifneq ($(and $(filter-out 0 0.0,$(DISTILL)),$(if $(TEACHER),,no)),)
$(error DISTILL=$(DISTILL) distils a teacher's embeddings: give TEACHER=FILE too (make teacher writes $(WORK)/teacher.npz))
endif
ifneq ($(and $(filter-out 0 0.0,$(TEACHER_VOTE)),$(if $(TEACHER_MODEL),,no)),)
$(error TEACHER_VOTE=$(TEACHER_VOTE) is the vote of an ONNX teacher at inference: give TEACHER_MODEL=FILE too (BirdNET labels and teaches, it does not vote))
endif
ifneq ($(filter-out floor minmax none,$(PL_NORM)),)
$(error PL_NORM must be floor, minmax or none, not "$(PL_NORM)")
endif
ifneq ($(strip $(filter-out $(addprefix model,$(IDS)),$(subst $(comma), ,$(PL_MEMBERS)))),)
$(error PL_MEMBERS=$(PL_MEMBERS) names model(s) not in $(MODELS): $(filter-out $(addprefix model,$(IDS)),$(subst $(comma), ,$(PL_MEMBERS))) (its models: $(addprefix model,$(IDS))))
endif
# a TEACHER file that is not there and that no rule makes: one line, before anything runs
ifneq ($(and $(TEACHER),$(filter-out $(WORK)/teacher.npz,$(TEACHER)),$(if $(wildcard $(TEACHER)),,missing)),)
$(error TEACHER=$(TEACHER) does not exist (make teacher writes $(WORK)/teacher.npz))
endif
$(foreach v,$(RECORDED),$(call record,$(v)))
ifeq ($(AUTO_ROUND),)
$(info settings of $(WORK): $(foreach v,$(wordlist 1,5,$(RECORDED)),$(call show,$(v))))
$(info $(space) $(foreach v,$(wordlist 6,10,$(RECORDED)),$(call show,$(v))))
$(info $(space) $(foreach v,$(wordlist 11,15,$(RECORDED)),$(call show,$(v))))
$(info $(space) $(foreach v,$(wordlist 16,99,$(RECORDED)),$(call show,$(v))))
endif
STAMP.prep := $(call stamp,prep,$(DATA) $(PREP_ARGS)$(if $(filter-out 5,$(CACHE_SECONDS)), window=$(CACHE_SECONDS)))
$(foreach r,$(wordlist 1,$(PLANNED_ROUNDS),$(ALL_ROUNDS)),$(foreach i,$(IDS),$(eval STAMP.round$(r)-model$(i) := \
	$(call stamp,round$(r)-model$(i),$(call MODEL_ROW,$(i)) epochs=$(EPOCHS) pretrained=$(PRETRAINED) \
	$(TRAIN_ARGS)$(if $(and $(TEACHER),$(filter 1,$(r))), teacher=$(TEACHER))$(if $(DISTILLING), distill=$(DISTILL) \
	teacher=$(TEACHER))$(if $(filter-out 1 1.0,$(call pl_power_of,$(r))), pl_power=$(call pl_power_of,$(r)))))))
STAMP.teacher := $(call stamp,teacher,$(TEACHER_MODEL) $(TEACHER_LABELS))
STAMP.pseudo := $(call stamp,pseudo,$(PL_NORM)$(if $(PL_MEMBERS), members=$(PL_MEMBERS))$(if $(TEACHER), \
	teacher=$(TEACHER) $(TEACHER_WEIGHT)))
STAMP.ensemble := $(call stamp,ensemble,rounds=$(ROUNDS)$(if $(filter auto,$(ROUNDS)), max=$(MAX_ROUNDS))$(if \
	$(PP_KERNEL)$(filter-out 0 0.0,$(PP_BOOST) $(PP_TTA)), pp=$(PP_KERNEL) $(PP_BOOST) $(PP_TTA)))
# a final ensemble that is not a copy of round ROUNDS's (one made before ROUNDS changed) is made again
ifneq ($(shell [ "$(ROUNDS)" != auto ] && [ -f $(WORK)/ensemble/manifest.json ] && \
	[ -f $(WORK)/round$(ROUNDS)/ensemble/manifest.json ] && \
	! cmp -s $(WORK)/ensemble/manifest.json $(WORK)/round$(ROUNDS)/ensemble/manifest.json && echo stale),)
STAMP.ensemble := FORCE
endif
endif

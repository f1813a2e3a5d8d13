"""The engine: search, training, evaluation, and what makes them robust.

- search.py      the search loop (weight steps, epoch-end derivation, λ adaptation)
- architect.py   the architecture step: where α and the GGM are updated, with the latency term
- train.py       training the derived network
- evaluate.py    mIoU evaluation with flip / multi-scale TTA (`gasnas eval`)
- metrics.py     the confusion matrix and the numbers derived from it
- losses.py      cross-entropy and OHEM cross-entropy
- checkpoint.py  resumable checkpoints (weights, α, optimizers, λ, position, RNG states)
- sampling.py    resumable, shardable data order
- distributed.py torchrun data parallelism (gradient all-reduce, global BatchNorm)
- runtime.py     device, seeds, determinism, Ctrl-C, metrics log, progress bars
- commands.py    the CLI
"""

"""One training run, in this process or as one data-parallel worker: pre-training (``pretraining.run``),
fine-tuning (``finetuning.run``) and its scores on a split (``scoring``), what they share (``shared``), checkpoints,
the runtime interface, the metrics reports, the run's history (TensorBoard and JSON lines, ``history``) and the
W&B / MLflow trackers (``trackers``).

May import: ``simmtm.data``, ``simmtm.method``, ``simmtm.config``, ``simmtm.errors``.
"""

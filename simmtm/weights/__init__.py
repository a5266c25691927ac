"""Weights in and out: a pre-training run as a model (``from_run.load_pretrained``), exported encoders and their
model card (``exporting``, ``model_card``), and the official SimMTM checkpoints (``official``).

May import: ``simmtm.outdir``, ``simmtm.train``, ``simmtm.data``, ``simmtm.method``, ``simmtm.config``,
``simmtm.errors``.
"""

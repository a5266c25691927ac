"""Everything that talks to Ray about where work runs: the driver's Ray session (``ray_session``), what one run
occupies (``resources``), data-parallel pre-training on Ray Train (``distributed``), one run here or on Ray Train
workers (``single_run``) and the offline checks of cluster launcher files (``cluster_check``, with Ray's own check of
them in ``ray_schema``).

May import: ``simmtm.weights``, ``simmtm.outdir``, ``simmtm.train`` and the layers below them.
"""

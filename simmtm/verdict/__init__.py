"""Does one setting beat another: the statistics (``stats``: seed noise, paired differences, intervals), the
confirmation stage's plan and verdict (``confirmation``) and whether the pruning probe predicts the final score
(``probe_check``).

May import: ``simmtm.cluster`` and the layers below it; in practice only ``simmtm.config`` and ``simmtm.errors``.
"""

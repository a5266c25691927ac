"""Does one setting beat another: the statistics (``stats``: seed noise, paired differences, intervals), the
confirmation stage's plan and verdict (``confirmation``), whether the pruning probe predicts the final score
(``probe_check``), and what a sweep recommends (``recommendation``: the neighbourhood, its interval, the words;
``widening``: whether a best value at a bound calls for a wider range).

May import: ``simmtm.cluster`` and the layers below it; in practice only ``simmtm.config`` and ``simmtm.errors``.
"""

"""The paper: the SimMTM objective (``model``), the encoders, the downstream heads, the masking strategies, and
the attention kernel with its torch operator (``attention``, ``attention_kernel.cpp``); ``memory`` keeps a CPU
step's memory down without changing its numbers.

May import: ``simmtm.config``, ``simmtm.errors``. Nothing here knows about run folders, Ray or sweeps.
"""

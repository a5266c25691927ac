"""What a run owns on disk: the run-folder policy (``rundir``: resume, restart or refuse), one writer per folder
(``folder_lock``), where a command will write (``write_targets``) and the record of the processes a driver
started (``process_record``).

May import: ``simmtm.train`` (checkpoints), ``simmtm.data``, ``simmtm.method``, ``simmtm.config``, ``simmtm.errors``.
"""

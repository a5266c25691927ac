"""The run config: its typed schema (``schema``: ``RunConfig``, ``load_config``) and the dotted-key helpers every
reader and writer of a config shares (``keys``).

The lowest layer but ``errors``: imports only ``simmtm.errors`` (and pydantic, yaml).
"""

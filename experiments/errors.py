"""The one configuration-error type of the repository's experiments and harness.

Every setting that cannot work (a missing corpus, a bad gin value, an unusable model
directory, an optimizer setting the optimizer rejects) raises `ConfigError` with a message
that names the culprit: the gin binding, the variable, the file or the directory.
`launch/run.py` catches it in one place and exits with status 2, printing the message alone
(`--verbose` adds the traceback). `amos/` depends on nothing of ours and raises plain
`ValueError`s; the harness turns those into `ConfigError`s where it calls the optimizer.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the culprit."""

"""Reading the text files a configuration names (corpora, vocabularies), with errors that
name the file and the gin binding that points at it."""

from __future__ import annotations

import os

from experiments.errors import ConfigError


def read_text(path: str | None, binding: str, what: str = "text file") -> str:
    """The UTF-8 contents of ``path``; a ConfigError naming ``path`` and ``binding`` if it is
    missing, not a file, unreadable or not UTF-8 text (a binary file given by mistake)."""
    if not path:
        raise ConfigError(f"no {what} given (gin binding {binding})")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path!r} (gin binding {binding})")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path!r} (gin binding {binding}) is not UTF-8 text: byte "
            f"0x{e.object[e.start]:02x} at offset {e.start} cannot be decoded"
        ) from None
    except OSError as e:
        raise ConfigError(f"{what} {path!r} (gin binding {binding}) cannot be read: {e}") from None

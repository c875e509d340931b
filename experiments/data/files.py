"""Reading the files a configuration names (corpora, vocabularies, tokenizer models), with
errors that name the file and the gin binding that points at it. Paths go through
`etils.epath`, so a `gs://` path reads like a local one (the same code path is tested on
local files)."""

from __future__ import annotations

from etils import epath

from experiments.errors import ConfigError


def read_text(path: str | None, binding: str, what: str = "text file") -> str:
    """The UTF-8 contents of ``path``; a ConfigError naming ``path`` and ``binding`` if it is
    missing, not a file, unreadable or not UTF-8 text (a binary file given by mistake)."""
    if not path:
        raise ConfigError(f"no {what} given (gin binding {binding})")
    if not epath.Path(path).is_file():
        raise ConfigError(f"{what} not found: {path!r} (gin binding {binding})")
    try:
        return epath.Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path!r} (gin binding {binding}) is not UTF-8 text: byte "
            f"0x{e.object[e.start]:02x} at offset {e.start} cannot be decoded"
        ) from None
    except OSError as e:
        raise ConfigError(f"{what} {path!r} (gin binding {binding}) cannot be read: {e}") from None


def is_file(path: str) -> bool:
    """Whether ``path`` (local or ``gs://...``) is an existing file."""
    return bool(path) and epath.Path(path).is_file()


def is_dir(path: str) -> bool:
    """Whether ``path`` (local or ``gs://...``) is an existing directory."""
    return bool(path) and epath.Path(path).is_dir()


def read_bytes(path: str) -> bytes:
    """The contents of ``path`` (local or ``gs://...``)."""
    return epath.Path(path).read_bytes()

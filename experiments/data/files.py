"""Reading the files a configuration names (corpora, vocabularies, tokenizer models), with
errors that name the file and the gin binding that points at it. Paths go through
`etils.epath`, so a `gs://` path reads like a local one (tests/launch/test_gcs.py reads a
corpus and a vocabulary from a local Cloud Storage emulator)."""

from __future__ import annotations

import os
import re

# etils.epath reaches gs:// through TensorFlow's gfile whenever TensorFlow is installed
# (for tfds and seqio), and decides once per process, at its first gs:// path: every data
# file would import all of TensorFlow, and gfile cannot be pointed at another endpoint
# (a test's emulator). Its other backend, gcsfs (pinned), is what epath uses without it.
# EPATH_USE_TF=true in the environment brings gfile back; launch/run.py does the same.
os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402

from experiments.errors import ConfigError  # noqa: E402

# The schemes a path may have besides none (a local path): Cloud Storage, which etils.epath
# reads and writes through gcsfs and orbax's arrays through tensorstore's GCS driver. epath
# also names s3://, az:// and hf://, but their filesystems are not installed, and anything
# else (memory://, file://) is no path epath can open.
SUPPORTED_SCHEMES = ("gs",)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def check_scheme(path: str, binding: str | None = None, what: str = "path") -> None:
    """A ConfigError naming ``path`` (and ``binding``) unless it is a local path or
    ``gs://BUCKET/...``: an unsupported scheme would otherwise fail deep inside epath or
    orbax with a KeyError or an ImportError traceback."""
    match = _SCHEME.match(path)
    if match is None:
        return
    where = f"{what} {path!r}" + (f" (gin binding {binding})" if binding else "")
    scheme = match.group(1)
    if scheme not in SUPPORTED_SCHEMES:
        raise ConfigError(
            f"{where}: the scheme {scheme}:// is not supported; use a local path or "
            "gs://BUCKET/PATH (Google Cloud Storage)"
        )
    if not path[match.end() :].split("/")[0]:
        raise ConfigError(f"{where} names no bucket: gs://BUCKET/PATH")


def read_text(path: str | None, binding: str, what: str = "text file") -> str:
    """The UTF-8 contents of ``path``; a ConfigError naming ``path`` and ``binding`` if it is
    missing, not a file, unreadable or not UTF-8 text (a binary file given by mistake)."""
    if not path:
        raise ConfigError(f"no {what} given (gin binding {binding})")
    check_scheme(path, binding, what)
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
    if path:
        check_scheme(path)
    return bool(path) and epath.Path(path).is_file()


def is_dir(path: str) -> bool:
    """Whether ``path`` (local or ``gs://...``) is an existing directory."""
    if path:
        check_scheme(path)
    return bool(path) and epath.Path(path).is_dir()


def read_bytes(path: str) -> bytes:
    """The contents of ``path`` (local or ``gs://...``)."""
    check_scheme(path)
    return epath.Path(path).read_bytes()

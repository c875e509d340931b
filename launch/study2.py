"""The command line of `launch/study/study2.py`: see its docstring (and docs/study.md)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a file.
    from launch.study.study2 import main

    sys.exit(main())

"""The command line of `launch/study/sweep.py`: see its docstring (and docs/study.md)."""

import sys

from launch.study.sweep import main

if __name__ == "__main__":
    sys.exit(main())

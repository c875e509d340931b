"""The command line of `launch/study/compare.py`: see its docstring (and docs/study.md)."""

import sys

from launch.study.compare import main

if __name__ == "__main__":
    sys.exit(main())

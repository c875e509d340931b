"""The command line of `launch/study/study2.py`: see its docstring (and docs/study.md)."""

import sys

from launch.study.study2 import main

if __name__ == "__main__":
    sys.exit(main())

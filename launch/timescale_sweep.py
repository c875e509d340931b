"""The command line of `launch/study/timescale_sweep.py`: see its docstring (and docs/study.md)."""

import sys

from launch.study.timescale_sweep import main

if __name__ == "__main__":
    sys.exit(main())

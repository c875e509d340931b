"""The command line of `launch/study/readme_results.py`: see its docstring (and docs/study.md)."""

import sys

from launch.study.readme_results import main

if __name__ == "__main__":
    sys.exit(main())

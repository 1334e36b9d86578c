"""`python -m slimsr.profile --rss-child SPEC`: the child process of `memory.cpu_peak_memory`.

The CPU peak-memory figure is measured in a fresh interpreter so that nothing of the parent's
history is in it; this entry point keeps the child's command independent of which submodule
holds the measuring code (running a submodule with `-m` would import it twice).
"""

import sys

from slimsr.profile.memory import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

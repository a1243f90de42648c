"""`python -m softsync.dist`: the documented alias of `python -m softsync.torchrun` (one rank of a dist run)."""

import runpy

if __name__ == "__main__":
    runpy.run_module("softsync.torchrun", run_name="__main__", alter_sys=True)

"""Run ``rt generate`` with rank 0 in its own process, in this fresh process, and
report what the driver imported: ``python -m tests.engine_e2e.rank0_process ARGS``.

Prints ``rt generate``'s own output, then one JSON line: its exit code and whether
this process (the driver) imported torch.
"""

from __future__ import annotations

import json
import os
import sys

from rt.core.cli import main

if __name__ == "__main__":
    code = main(["generate", *sys.argv[1:], "--set", "parallel.rank0=process"])
    report = {"code": code, "torch": "torch" in sys.modules}
    print(json.dumps(report), flush=True)
    os._exit(0)  # like the rt executable: skip the interpreter's teardown

# Minimal test runner for the MicroPython unix port (no pytest there).
#   micropython -X heapsize=64k runner.py MODULE [TEST]   run one or all tests of MODULE
#   micropython runner.py MODULE --list                 print the test names
# Prints "PASS name" / "FAIL name: error" lines; exits 1 if any test failed.
import gc
import os
import sys

_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
# HW_MP_PATH: directories of precompiled .mpy files (compiling the sources
# inside a 64 KB heap would not fit: devices run precompiled code too).
for _p in reversed(
    (os.getenv("HW_MP_PATH") or (_here + ":" + _here + "/../../../firmware")).split(":")
):
    sys.path.insert(0, _p)


def main(argv):
    mod = __import__(argv[1])
    names = [n for n in sorted(dir(mod)) if n.startswith("test_")]
    if len(argv) > 2 and argv[2] == "--list":
        for n in names:
            print(n)
        return 0
    if len(argv) > 2:
        names = [argv[2]]
    failed = 0
    for n in names:
        gc.collect()
        try:
            getattr(mod, n)()
            print("PASS", n)
        except Exception as e:
            failed += 1
            print("FAIL", n + ":", repr(e))
            sys.print_exception(e)
    return 1 if failed else 0


sys.exit(main(sys.argv))

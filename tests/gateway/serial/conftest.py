"""Make ``gateway`` resolve to the project package, not to ``tests/gateway``.

pytest puts ``tests/`` on sys.path (``pythonpath``), where ``tests/gateway`` is
a namespace directory that would otherwise shadow the real package.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[3])
HERE = str(Path(__file__).resolve().parent)
if ROOT not in sys.path[:1]:
    sys.path.insert(0, ROOT)
if HERE not in sys.path:
    sys.path.append(HERE)  # the vectors generator is imported by its test
for _name in [m for m in sys.modules if m == "gateway" or m.startswith("gateway.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]

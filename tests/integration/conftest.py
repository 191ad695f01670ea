"""Integration tests share the history ``checker`` and the ``workload`` that feeds it;
make them importable in any pytest import mode (``importlib`` does not put test
directories on ``sys.path``). ``bench/failover_soak.py`` imports them the same way."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

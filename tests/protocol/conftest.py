"""Protocol tests share ``protocol_strategies`` and the ``fuzz_decoders`` target; make
them importable in any pytest import mode (``importlib`` does not put test
directories on ``sys.path``). ``fuzz_decoders`` also runs as a script from here."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

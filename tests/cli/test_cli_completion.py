"""Shell completion of option values, as bash asks for it (the script that
`headwater --install-completion bash` installs sets these variables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEADWATER = Path(sys.executable).with_name("headwater")

CASES = [
    ("headwater topic list --output ", ["table", "json"]),
    ("headwater consume t -O ", ["text", "json"]),
    ("headwater produce t --acks ", ["none", "leader", "all"]),
    ("headwater topic create x --compression ", ["none", "zlib"]),
    ("headwater topic alter x --budget-policy d", ["drop-oldest"]),
    ("headwater run spu --log-level w", ["warning"]),
    ("headwater local --durability ", ["group", "always", "never"]),
    ("headwater run sc --log-format ", ["text", "json"]),
    ("headwater to", ["topic", "token"]),
    ("headwater token create x --kind ", ["user", "gateway"]),
]


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_choices_complete(line: str, expected: list[str]) -> None:
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    env = {**os.environ, "COMP_WORDS": line, "COMP_CWORD": str(cword),
           "_HEADWATER_COMPLETE": "complete_bash"}
    # The installed command: completion is keyed by the program's name.
    out = subprocess.run([str(HEADWATER)], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.stdout.split() == expected, out.stderr

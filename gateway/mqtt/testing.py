"""A real mosquitto broker on a free 127.0.0.1 port, for tests, benchmarks and examples.

The broker gets a generated config and its own persistence directory, so a test can
stop it, start it again on the same port and find the persistent sessions where it
left them. ``CI=true`` turns a missing binary into a hard failure (see the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from edge.testing import free_port

# Debian installs the broker outside a normal user's PATH.
DEFAULT_BINARIES: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT_S: Final = 10.0


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None when it is not installed."""
    found = os.environ.get("MOSQUITTO") or shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in DEFAULT_BINARIES if os.access(path, os.X_OK)), None)


def broker_config(
    *, port: int, data_dir: Path, extra: str = "", password_file: Path | None = None
) -> str:
    """A mosquitto.conf that loses nothing a client was told is safe while it runs.

    ``max_queued_messages 0`` lifts the default limit of 1000 queued messages per
    offline client, past which mosquitto silently drops QoS 1 messages.
    """
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            # Started as root, mosquitto switches to the user "mosquitto", which could not
            # write the persistence directory of the test: stay the user that started it.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "allow_anonymous false" if password_file else "allow_anonymous true",
            f"password_file {password_file}" if password_file else "",
            "persistence true",
            f"persistence_location {data_dir}/",
            "autosave_interval 0",
            "autosave_on_changes false",
            "max_queued_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            extra,
            "",
        ]
    )


class Mosquitto:
    """``async with Mosquitto(tmp_path) as broker``: a broker process on ``broker.port``."""

    def __init__(self, directory: Path, *, port: int = 0, extra_config: str = "",
                 password_file: Path | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt install mosquitto)")
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._extra = extra_config
        self._password_file = password_file
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def config_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        data_dir = self.directory / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            broker_config(port=self.port, data_dir=data_dir, extra=self._extra,
                          password_file=self._password_file)
        )
        log = (self.directory / "mosquitto.log").open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        finally:
            log.close()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                if self._process is not None and self._process.returncode is not None:
                    raise RuntimeError(f"mosquitto exited with {self._process.returncode}")
                try:
                    _, writer = await asyncio.open_connection(self.host, self.port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return

    async def stop(self, *, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the broker: SIGTERM saves the persistent sessions, SIGKILL does not."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(sig)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

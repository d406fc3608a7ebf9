"""A simulator of the Open Connectors Bulk API, served over real HTTP.

It takes its credentials and signing key from the same settings as bulkhook's client
(BULKHOOK_ELEMENT_TOKEN, BULKHOOK_USER_SECRET, BULKHOOK_ORGANIZATION_SECRET,
BULKHOOK_SIGNATURE_KEY), so one environment drives both sides.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from flask import Flask

from ..config import Settings
from ..errors import init_app as init_errors
from ..exceptions import ConfigError
from .callbacks import Deliverer
from .state import Switches, World
from .views import BASE_PATH, bp

EXTENSION = "simulator"
"""Key under `app.extensions` of the running simulator."""


class Simulator:
    """The world, its clock and its callback sender."""

    def __init__(self, settings: Settings, switches: Switches) -> None:
        if not settings.element_token or not settings.user_secret:
            raise ConfigError(
                "the simulator checks the auth header: set BULKHOOK_ELEMENT_TOKEN and "
                "BULKHOOK_USER_SECRET (the client uses the same settings)"
            )
        self.settings = settings
        self.world = World(switches)
        self.deliverer = Deliverer(
            self.world, settings.signature_keys[0] if settings.signature_keys else None
        )
        self._clock = threading.Thread(target=self._tick, name="simulator-clock", daemon=True)
        self._stopped = threading.Event()

    def start(self) -> None:
        self.deliverer.start()
        self._clock.start()

    def stop(self) -> None:
        self._stopped.set()
        self.deliverer.stop()

    def _tick(self) -> None:
        while not self._stopped.wait(0.02):
            for job in self.world.advance(time.time()):
                self.deliverer.job_finished(job)


def create_simulator(
    environ: Mapping[str, str] | None = None, switches: Switches | None = None
) -> Flask:
    """Build the simulator app (its clock and sender already running)."""
    settings = Settings.from_env(environ)
    simulator = Simulator(settings, switches or Switches())
    app = Flask(__name__)
    app.extensions[EXTENSION] = simulator
    init_errors(app)
    app.register_blueprint(bp)
    simulator.start()
    return app


__all__ = ["BASE_PATH", "Switches", "create_simulator"]

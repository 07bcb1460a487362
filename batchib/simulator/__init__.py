"""An OpenAI-compatible chat-completion gateway simulator on loopback, for tests and demos."""

from batchib.simulator.app import create_app
from batchib.simulator.serve import serve
from batchib.simulator.settings import SimulatorSettings

__all__ = ["SimulatorSettings", "create_app", "serve"]

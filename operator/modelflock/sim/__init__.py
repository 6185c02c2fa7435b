"""A simulated vLLM/TGI engine: the engines' HTTP surface and metrics, with a queueing model.

Used by tests, the demo and benchmarks instead of a GPU. `running_sim` starts one in-process.
"""

from modelflock.sim.config import Behaviour, SimSettings
from modelflock.sim.server import SimServer, running_sim

__all__ = ["Behaviour", "SimServer", "SimSettings", "running_sim"]

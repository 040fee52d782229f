"""An Ollama-API simulator: a real HTTP server that behaves like Ollama, without a GPU.

Public API::

    from olol.sim import Simulator, SimConfig, ModelSpec, parse_models_spec
"""

from olol.sim.faults import Faults
from olol.sim.simulator import SimConfig, Simulator
from olol.sim.spec import ModelSpec, SpecError, parse_models_spec

__all__ = ["Faults", "ModelSpec", "SimConfig", "Simulator", "SpecError", "parse_models_spec"]

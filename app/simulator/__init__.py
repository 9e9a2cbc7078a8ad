"""The built-in upstream: a deterministic AvePoint partner API for tests, the demo and benchmarks.

`Simulator` holds the data (from a seed, moving with its clock), the issued tokens, the
request counters and the fault knobs of a `SimulatorConfig`; `create_simulator_app` wraps
it in an ASGI app that speaks the upstream's token, customers and jobs endpoints, and
`run_simulator` serves that app over HTTP (`jobs-gateway simulate`).

    data.py    the config, the customers, their plans and runs, the wire-format rows
    faults.py  request counters and the kinds of faults
    state.py   Simulator
    app.py     the ASGI app and the blocking server
"""

from app.simulator.app import create_simulator_app, run_simulator
from app.simulator.data import SimulatorConfig
from app.simulator.faults import Fault, Malformed, RequestRecord, SimulatorStats
from app.simulator.state import Simulator

__all__ = [
    "Fault",
    "Malformed",
    "RequestRecord",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "create_simulator_app",
    "run_simulator",
]

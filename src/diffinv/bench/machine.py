"""The machine a row was computed on: :mod:`diffinv.machine`, re-exported here (the bench module
where it was first defined), so ``from diffinv.bench.machine import machine_info`` keeps working.
"""

from diffinv.machine import cpu_model, describe_machine, machine_info

__all__ = ["cpu_model", "describe_machine", "machine_info"]

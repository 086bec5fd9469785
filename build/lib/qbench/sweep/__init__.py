"""The sweep: sweep files (sweepfile.py), cell identity and keys (cells.py), one cell's
computation (compute.py), the result store (store.py) and the driver with its executors
(run.py; Ray: ray_executor.py). `qbench sweep SWEEP.yaml`."""
from .cells import CellSpec, expand, key_of
from .store import CorruptCell, Store, StoreError, StoreFull
from .sweepfile import Arm, Sweep, SweepError, load_sweep

__all__ = ["Arm", "CellSpec", "CorruptCell", "Store", "StoreError", "StoreFull", "Sweep", "SweepError", "expand",
           "key_of", "load_sweep"]

"""The sweep: grid expansion, cell keys, the result store and the runner (resume, isolation,
progress, workers). `qbench sweep SWEEP.yaml`; see spec.py for the sweep file format and
runner.py for how cells are computed (and why the design scales out)."""
from .spec import CellSpec, Sweep, SweepError, expand, key_of, load_sweep
from .store import Store, StoreError, atomic_write_text

__all__ = ["CellSpec", "Sweep", "SweepError", "expand", "key_of", "load_sweep", "Store", "StoreError",
           "atomic_write_text"]

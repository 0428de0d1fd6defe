"""Reference data that ships inside the package, read through `importlib.resources` so an
installed wheel finds it from any directory:

- `miner_models.toml`: the default miner models (`[NAME] hashrate_th = … power_w = …`);
- `bmu_mapping.json`: real wind-farm BM units with their lead parties and capacities;
- `difficulty_2024.json`: the real daily bitcoin difficulty of 2024.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: The folder of the reference files (wheels install unzipped, so it is a real folder).
REFERENCE_DIR = Path(str(files(__name__)))

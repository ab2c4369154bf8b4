"""`tuneflow ingest --hf`: the replacement for the seed's download-dataset.py.

Loads a dataset with `datasets` (a hub id where the machine has internet, or a local folder laid
out like a hub repository), writes each split as parquet and uploads it to
`datasets/<name>/data/<split>-00000-of-00001.parquet`; `dataset.json` goes last, so the dataset
is prepared exactly once, when all its files are there.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from shared import naming, storage
from shared.contracts import DATASETS_CONTAINER


def ingest(source: str, dataset: str | None, split_pc: float | None, console) -> list[str]:
    from datasets import load_dataset  # heavy, and only for this command
    name = naming.check_dataset(dataset or naming.slug(source.rstrip("/").split("/")[-1], 40).replace("-", "_"))
    splits = load_dataset(source)
    container = storage.container(DATASETS_CONTAINER)
    uploaded, files = [], []
    with tempfile.TemporaryDirectory(prefix="tuneflow-ingest-") as tmp:
        for split, data in splits.items():
            rel = f"data/{naming.slug(split, 40).replace('-', '_')}-00000-of-00001.parquet"
            path = Path(tmp) / rel.replace("/", "__")
            data.to_parquet(str(path))
            with open(path, "rb") as f:
                container.upload_blob(f"{name}/{rel}", f, overwrite=True)
            console.print(f"{split}: {data.num_rows} rows -> datasets/{name}/{rel}")
            uploaded.append(f"{name}/{rel}")
            files.append(rel)
    spec = {"files": sorted(files), "options": {"split_pc": split_pc} if split_pc else {}}
    container.upload_blob(f"{name}/{naming.DATASET_FILE}", json.dumps(spec, indent=2).encode(), overwrite=True)
    uploaded.append(f"{name}/{naming.DATASET_FILE}")
    return uploaded

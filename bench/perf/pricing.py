"""The benchmark's catalog: the project's pricing.yaml with each model's routes cut down to the
providers a scenario measures (e.g. local_gpu only, so every request takes the same path)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def write_pricing(dest: Path, providers: Collection[str], source: Path = ROOT / "pricing.yaml") -> Path:
    catalog = yaml.safe_load(source.read_text())
    for model_id, model in list(catalog["models"].items()):
        routes = [r for r in model.get("routes", []) if r["provider"] in providers]
        if routes:
            model["routes"] = routes
            if not any(r.get("edit_model") for r in routes):
                model.pop("edits", None)  # the catalog refuses edits that no route can serve
        else:
            del catalog["models"][model_id]
    if not catalog["models"]:
        raise ValueError(f"no model in {source} has a route through {sorted(providers)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("# written by bench.perf; routes limited to " + ", ".join(sorted(providers)) + "\n"
                    + yaml.safe_dump(catalog, sort_keys=False))  # fmt: skip
    return dest

"""Print every setting as a Markdown table (env variable, default, meaning) for README.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel  # noqa: E402

from worker.settings import ENV_PREFIX, Settings  # noqa: E402


def rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    out = []
    for name, info in model.model_fields.items():
        if isinstance(info.default, BaseModel):
            out += rows(type(info.default), f"{prefix}{name.upper()}__")
            continue
        default = info.default
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        out.append((f"{prefix}{name.upper()}", "" if default is None else str(default), info.description or ""))
    return out


if __name__ == "__main__":
    print("| variable | default | meaning |\n|---|---|---|")
    for var, default, meaning in rows(Settings, ENV_PREFIX):
        print(f"| `{var}` | `{default}` | {meaning} |" if default else f"| `{var}` | | {meaning} |")

"""The bundled sink profiles (sinkhole/data/profiles/<name>.json) and profile files, read back as
`SinkProfile`s (the typed result and its schema: sinkhole.results.sink_profile)."""

from __future__ import annotations

import json
from pathlib import Path

from sinkhole.errors import SinkholeError
from sinkhole.results.sink_profile import PROFILE_SCHEMA, SCORE_WINDOW, SinkProfile

__all__ = ["PROFILE_SCHEMA", "SCORE_WINDOW", "SHIPPED_DIR", "SinkProfile", "load_profile"]

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"


def load_profile(name_or_path: str | Path, model=None) -> SinkProfile:
    """A shipped profile by model short name ('smollm2-135m'), or a profile JSON file.

    With `model` (a LoadedModel or ModelProbe), a profile made for other weights is refused.
    """
    if not isinstance(name_or_path, (str, Path)) or not str(name_or_path).strip():
        raise SinkholeError(f"load_profile needs a shipped model name or a profile file path, not {name_or_path!r}")
    path = Path(name_or_path)
    if path.is_dir():
        raise SinkholeError(f"profile {path} is a directory: give a profile JSON file")
    if not path.is_file():
        shipped = SHIPPED_DIR / f"{name_or_path}.json"
        if not shipped.is_file():
            names = sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))
            raise SinkholeError(
                f"no profile file '{name_or_path}' and no shipped profile of that name "
                f"(shipped: {', '.join(names) or 'none'})"
            )
        path = shipped
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SinkholeError(f"cannot read profile {path}: {err}") from None
    profile = SinkProfile.from_dict(d, source=str(path))
    if model is not None:
        lm = getattr(model, "lm", model)  # a ModelProbe holds its LoadedModel as .lm
        profile.check_model(weights_id=getattr(lm, "weights_id", None), name=getattr(lm, "name", None))
    return profile

"""`sinkhole models`: the bundled models, whether their packages are installed, and what the cache holds."""

from __future__ import annotations

import json
from pathlib import Path

HELP = "list bundled models and the converted models in the cache (with sizes)"
EPILOG = """examples:
  sinkhole models
  sinkhole models --json models.json
  sinkhole models --verify      # re-hash every converted model; exit code 1 when one is damaged
"""


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser(
        "models", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", type=Path, help="also write the listing as JSON here")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every converted model's files against the content hashes recorded at conversion "
        "(reads every byte; a damaged one is rebuilt by its next load)",
    )
    p.set_defaults(run=run)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def listing() -> dict:
    """{"bundled": [...], "cache": {"dir", "converted": [...]}}; never converts or downloads anything."""
    from sinkhole.errors import SinkholeError
    from sinkhole.io import cache_dir
    from sinkhole.models.registry import BUNDLED, bundled_gguf_path

    converted = []
    root = cache_dir() / "gguf"
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            src = json.loads((d / "sinkhole-source.json").read_text())
        except (OSError, ValueError):
            src = {}
        converted.append(
            {
                "dir": str(d),
                "gguf": src.get("gguf"),
                "sha256": src.get("sha256"),
                "complete": (d / "config.json").is_file() and bool(src),
                "bytes": _size(d),
            }
        )
    bundled = []
    for name, m in BUNDLED.items():
        try:
            gguf = bundled_gguf_path(name)
        except SinkholeError:
            gguf = None
        conv = [c for c in converted if gguf is not None and c["gguf"] == str(gguf)]
        bundled.append(
            {
                "name": name,
                "description": m.description,
                "package": m.package,
                "install": m.install,
                "installed": gguf is not None,
                "gguf": None if gguf is None else str(gguf),
                "gguf_bytes": None if gguf is None else gguf.stat().st_size,
                "converted": conv[0]["dir"] if conv else None,
                "converted_bytes": conv[0]["bytes"] if conv else None,
            }
        )
    names = {b["gguf"]: b["name"] for b in bundled if b["gguf"]}
    for c in converted:
        c["model"] = names.get(c["gguf"])
    return {"bundled": bundled, "cache": {"dir": str(cache_dir()), "converted": converted}}


def render(d: dict) -> str:
    lines = ["Bundled models"]
    for b in d["bundled"]:
        lines.append(f"  {b['name']:<14} {b['description']}")
        if not b["installed"]:
            lines.append(f"  {'':<14} not installed: {b['install']}")
            continue
        lines.append(f"  {'':<14} GGUF {human(b['gguf_bytes'])}  {b['gguf']}")
        lines.append(
            f"  {'':<14} "
            + (
                f"converted {human(b['converted_bytes'])}  {b['converted']}"
                if b["converted"]
                else "not converted yet (the first run converts it once)"
            )
        )
    conv = d["cache"]["converted"]
    total = sum(c["bytes"] for c in conv)
    lines.append(f"Cache  {d['cache']['dir']}  ({len(conv)} converted, {human(total)})")
    for c in conv:
        what = c["model"] or (Path(c["gguf"]).name if c["gguf"] else "unknown source")
        lines.append(
            f"  {Path(c['dir']).name}  {human(c['bytes']):>9}  {what}" + ("" if c["complete"] else "  (incomplete)")
        )
    return "\n".join(lines)


def render_verify(checks: list[dict]) -> str:
    lines = [f"Verified {len(checks)} converted model(s)"]
    for c in checks:
        what = Path(c["gguf"]).name if c["gguf"] else "unknown source"
        state = "ok" if c["problem"] is None else f"DAMAGED: {c['problem']} (the next load rebuilds it)"
        lines.append(f"  {Path(c['dir']).name}  {what}  {state}")
    return "\n".join(lines)


def run(args) -> int:
    from sinkhole.cli.common import raise_failures, result_stream, status, write_all
    from sinkhole.results.report import write_json

    d = listing()
    if args.verify:
        from sinkhole.models.gguf_cache import verify_all

        d["verify"] = verify_all(log=status)
    failures = write_all([(args.json, lambda: write_json(d, args.json, "model listing"))])
    print(render(d), file=result_stream(args.json))
    if args.verify:
        print(render_verify(d["verify"]), file=result_stream(args.json))
    raise_failures(failures)
    return 1 if args.verify and any(c["problem"] for c in d["verify"]) else 0

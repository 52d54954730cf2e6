"""Training fields as command-line flags: ``--max-steps 500 --no-ema-warmup --lr=3e-4``.

Every field of :class:`~difflab.train.config.TrainConfig` (but the ``model`` and ``data`` tables, which
only a TOML file or a preset sets) is a flag, typed by its default; the help text lists them with their
comments. Importing this module needs no torch.
"""

from __future__ import annotations

import dataclasses

from difflab.train.config import TABLES, TrainConfig, field_help


def training_fields_help() -> str:
    notes, kinds = field_help(), {int: " INT", float: " FLOAT"}
    lines = ["Training fields: each is a flag below, or a line of a --config TOML file (flags win); "
             "--preset sets other defaults.", ""]
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name in TABLES:
            flag, default = f"[{f.name}] (TOML)", "see --preset" if f.name == "model" else "none"
        elif isinstance(f.default, bool):
            flag, default = f"{flag} / --no-{flag[2:]}", "on" if f.default else "off"
        else:
            flag, default = flag + kinds.get(type(f.default), " TEXT"), f.default
        lines.append(f"  {flag:<40} {notes.get(f.name, '')} [default: {default}]")
    return "\n".join(lines) + "\n"


def parse_field_flags(args: list[str]) -> dict:
    """``--max-steps 500 --no-ema-warmup --rescale-zero-terminal-snr`` -> field values with field types.
    A boolean is ``--x``, ``--no-x`` or ``--x true|false``; every flag also takes ``--x=VALUE``."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in TABLES}
    values, i = {}, 0
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        name = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if name not in fields and name and name.startswith("no_") and isinstance(
                getattr(fields.get(name[3:]), "default", None), bool) and not inline:
            values[name[3:]], i = False, i + 1
            continue
        if name not in fields:
            raise ValueError(f"unknown option {args[i]!r}; training fields: "
                             + ", ".join("--" + n.replace("_", "-") for n in fields))
        default = fields[name].default
        if inline:
            values[name], i = convert(inline, default, flag), i + 1
        elif isinstance(default, bool) and (i + 1 == len(args) or args[i + 1].startswith("--")):
            values[name], i = True, i + 1
        elif i + 1 < len(args):
            values[name], i = convert(args[i + 1], default, flag), i + 2
        else:
            raise ValueError(f"option {flag} needs a value")
    return values


def convert(text: str, default, flag: str):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ValueError(f"option {flag} expects a {type(default).__name__}, got {text!r}") from None
    return text

"""Turn what a user typed (preset name, spec file, JSON or arch string) into an `Arch`."""

from __future__ import annotations

from pathlib import Path

from search_space.presets import PRESETS, preset
from search_space.spec import Arch, SpecError


def load_arch(text: str, width_mult: float | None = None, resolution: int | None = None,
              num_classes: int | None = None) -> Arch:
    """Resolve SPEC_OR_PRESET: a preset name, a .json/.txt spec file, inline JSON, or an arch string.

    `resolution` and `num_classes` override the spec's; `width_mult` applies to presets only.
    """
    text = text.strip()
    if text in PRESETS:
        return preset(text, 1.0 if width_mult is None else width_mult, 224 if resolution is None else resolution,
                      1000 if num_classes is None else num_classes)
    if width_mult is not None:
        raise SpecError(f"--width-mult applies to presets only ({', '.join(PRESETS)}), not to {text[:40]!r}")
    if text.startswith("{"):
        arch = Arch.from_json(text)
    elif text.startswith("r") and "," in text:
        arch = Arch.parse(text)
    else:
        path = Path(text)
        try:
            is_file = path.is_file()
        except OSError:  # too long to be a path name
            is_file = False
        if not is_file:
            raise SpecError(f"{text!r} is no preset ({', '.join(PRESETS)}), spec file, JSON or arch string "
                            "(r224_n1000,stem_...,ir_...,head_...)")
        try:
            content = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec file {text!r}: {exc}") from None
        try:
            arch = Arch.from_json(content) if content.lstrip().startswith("{") else Arch.parse(content.strip())
        except SpecError as exc:
            raise SpecError(f"{text}: {exc}") from None
    changes: dict[str, int] = {}
    if resolution is not None:
        changes["resolution"] = resolution
    if num_classes is not None:
        changes["num_classes"] = num_classes
    return arch.replace(**changes) if changes else arch

"""Fill ``${name}`` placeholders in Triton config templates, strictly.

CosyVoice's own ``fill_template.py`` silently leaves unknown placeholders in place, which surfaces later as a
model that fails to load. Here a placeholder without a value, or a value no placeholder asks for, is an error
that names the file and the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from cvload.errors import UsageError

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def pbtxt_string(value: str) -> str:
    """Escape a value for use inside a double-quoted protobuf text string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def fill_template(text: str, values: Mapping[str, object], *, source: str = "<template>",
                  allow_unused: bool = False) -> str:
    """Replace every ``${key}``; raise UsageError on a missing value or (unless allowed) an unused one."""
    wanted = placeholders(text)
    missing = sorted(wanted - set(values))
    if missing:
        raise UsageError(
            f"{source}: no value for placeholder(s) {', '.join('${' + m + '}' for m in missing)}",
            hint="add them to the deployment config",
        )
    unused = sorted(set(values) - wanted)
    if unused and not allow_unused:
        raise UsageError(
            f"{source}: unknown key(s) {', '.join(unused)}: the template has no such placeholder",
            hint="placeholders in this template: " + ", ".join(sorted(wanted)),
        )

    def render(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return PLACEHOLDER.sub(lambda m: render(values[m.group(1)]), text)


def fill_file(template: Path, target: Path, values: Mapping[str, object], *, allow_unused: bool = False) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(fill_template(template.read_text(), values, source=str(template), allow_unused=allow_unused))

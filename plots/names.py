"""Names as charts show them: escaped and shortened. An engine or model name is the user's (or a
server's) and may be thousands of characters long or hold control characters; drawn whole it makes
a figure of tens of megabytes, or none. Titles, labels and legends take the short form; the
records, CSVs and report tables keep the full name."""

from __future__ import annotations

import pandas as pd

from orchestrator.common.show import printable

WIDTH = 40  # characters of a name in a title, label or legend
NAMED = ("engine", "prompt_set", "category")  # the columns of a frame that hold names


def short(name: str, width: int = WIDTH) -> str:
    """`name` escaped, and if longer than `width`, its start and end around an ellipsis."""
    shown = printable(str(name))
    if len(shown) <= width:
        return shown
    tail = width // 4
    return f"{shown[:width - tail - 1]}…{shown[-tail:]}"


def shortened(names) -> dict[str, str]:
    """Each distinct name's short form, distinct as the names are (a numbered suffix where two
    long names would look alike)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in dict.fromkeys(names):
        form, k = short(name), 2
        while form in taken:
            form, k = f"{short(name, WIDTH - 3)}~{k}", k + 1
        out[name] = form
        taken.add(form)
    return out


def for_charts(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its name columns in their short forms (a copy; the frame itself is untouched)."""
    if frame is None or frame.empty:
        return frame
    out = frame.copy()
    for col in NAMED:
        if col in out.columns and not pd.api.types.is_numeric_dtype(out[col]):
            forms = shortened(out[col].dropna().astype(str))
            out[col] = out[col].map(lambda v, forms=forms: forms.get(str(v), v) if isinstance(v, str) else v)
    return out

"""Where a parallel sweep's cells ran, and the warning that cells side by side share a host."""

from __future__ import annotations

from orchestrator.types.records import CellRecord


def placement_notes(cells: list[CellRecord]) -> list[str]:
    """Lines for the report and the terminal; none for a sweep that ran one cell at a time."""
    latest = {c.cell_id: c for c in cells}  # a resumed run's newer line for a cell wins
    placed = {c.cell_id: c.placement for c in latest.values() if c.placement is not None}
    if not placed:
        return []
    nodes = sorted({p.node or "?" for p in placed.values()})
    where = "; ".join(f"{cell} on {p.node or '?'} ({p.device or 'any device'})" for cell, p in placed.items())
    lines = [f"Cells ran side by side, one per device, on {len(nodes)} node(s): {where}."]
    shared = [p for p in placed.values() if p.beside]
    if shared:
        lines.append(f"Warning: {len(shared)} of {len(placed)} cells ran while other cells' servers ran on the same "
                     "host: they shared its CPU, PCIe and memory bandwidth, so each may measure slower than it "
                     "would alone (cells.jsonl's placement.beside names them). Compare depths measured side by "
                     "side with each other, or rerun a cell alone to see the cost of sharing.")
    moved = {cell: p for cell, p in placed.items() if p.earlier}
    if moved:
        lines.append("Warning: resumed on another node or device, so their requests were measured on more than one: "
                     + "; ".join(f"{cell} on {', then '.join(p.earlier)}, then {p.host}, {p.device}"
                                 for cell, p in moved.items())
                     + ". Their figures mix machines; rerun them in a new run to measure each on one device.")
    return lines

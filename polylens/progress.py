"""The one progress bar of long model runs: inputs, images or tokens done, rate and time left,
on stderr (tqdm); ``enabled=False`` (``--no-progress``) silences it."""

from __future__ import annotations


def progress_bar(total: int, desc: str, *, unit: str = "input", enabled: bool = True, initial: int = 0):
    """A tqdm bar over ``total`` units; call ``update(n)`` per batch and ``close()`` at the end."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        disable=not enabled or total <= 0,
    )

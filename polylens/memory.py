"""How much memory this machine has free (so sizes can be refused before they are allocated)."""

from __future__ import annotations


def available_memory() -> int:
    """Bytes available now (``MemAvailable`` in /proc/meminfo; 8 GiB where that cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30

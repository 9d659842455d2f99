"""``polylens sae train --resume``: refuse any option that disagrees with the run being continued.

An option counts when the user typed it, however it was spelled (argparse's prefixes included:
``--see 9`` is ``--seed 9``; ``cli.flags.given``), and its parsed value is compared with what the
run's checkpoint recorded. The data is compared by what it is, not by its path: ``sae.runs``
checks the store or file against the identity the run recorded, so a store moved elsewhere
resumes and a different one at the same path does not.
"""

from __future__ import annotations

from pathlib import Path

# option dest -> (section of the checkpoint's state, field): what --resume must not silently change
FIELDS = {
    "arch": ("sae", "arch"),
    "k": ("sae", "k"),
    "init": ("sae", "init"),
    "init_blend": ("sae", "init_blend"),
    "init_matrix": ("sae", "init_matrix"),
    "orth": ("sae", "orth"),
    "orth_full": ("sae", "orth_full"),
    "decoder_norm": ("sae", "decoder_norm"),
    "tied": ("sae", "tied"),
    "freeze_decoder": ("sae", "freeze_decoder"),
    "dict_size": ("sae", "dict_size"),
    "l1": ("sae", "l1"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "warmup": ("train", "warmup_steps"),
    "seed": ("train", "seed"),
    "lr_decay": ("train", "lr_decay"),
    "resample_every": ("train", "resample_every"),
    "resample_duplicates": ("train", "resample_duplicates"),
    "resample_dead_towards": ("train", "resample_dead_towards"),
    "dead_window": ("train", "dead_window"),
    "checkpoint_every": ("train", "checkpoint_every"),
    "bf16": ("train", "bf16"),
    "device": ("train", "device"),
    "l0": ("sae", "l0"),
    "bandwidth": ("sae", "bandwidth"),
    "threshold_init": ("sae", "threshold_init"),
    "prefixes": ("sae", "prefixes"),
    "skip": ("sae", "skip"),
    "loss": ("train", "loss"),
    "ds_coef": ("train", "ds_coef"),
}


def _value(dest: str, ours, state: dict):
    """The typed value as the checkpoint records it: ``--prefixes 8,16`` is the resolved prefix
    list, the dictionary size appended where it is not last."""
    if dest == "prefixes" and isinstance(ours, str):
        sizes = [int(p) for p in ours.split(",") if p.strip()]
        size = state["sae"].get("dict_size")
        return sizes if not sizes or sizes[-1] == size else [*sizes, size]
    return ours


def _same(ours, theirs) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return bool(ours) == bool(theirs)
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        return float(ours) == float(theirs)
    if isinstance(ours, str) and isinstance(theirs, str) and ":" in ours + theirs:  # cuda vs cuda:0
        return ours.removesuffix(":0") == theirs.removesuffix(":0")
    return ours == theirs


def check_resume(args, data_options: dict) -> None:
    """Refuse, on --resume, any typed option that disagrees with the run in ``args.out`` (its value
    and the run's named), and ``--samples`` below what the run has already trained."""
    from cli.flags import given
    from sae.files import CHECKPOINT, read_json
    from sae.runs import RUN, check_readable, checkpoint_state

    out = Path(args.out)
    check_readable(out / CHECKPOINT, "checkpoint")
    if not (out / CHECKPOINT).is_file():
        return  # resume_run says there is nothing to resume
    state = checkpoint_state(out)
    typed = given(args)
    if "transcoder" in typed and not state["sae"].get("d_out"):
        raise ValueError(
            f"--transcoder disagrees with the run in {out} (an SAE, not a transcoder); "
            "--resume continues the run as it was: drop the flag, or start a new run with another --out"
        )
    for dest, (section, field) in FIELDS.items():
        if dest not in typed:
            continue
        ours, theirs = getattr(args, dest), state[section].get(field)
        ours = _value(dest, ours, state)
        theirs = list(theirs) if isinstance(theirs, tuple) else theirs
        if not _same(ours, theirs):
            flag = f"--{dest.replace('_', '-')}"
            raise ValueError(
                f"{flag} {ours} disagrees with the run in {out} ({field}={theirs}); "
                "--resume continues the run as it was: drop the flag, or start a new run with another --out"
            )
    done = state["step"] * state["train"]["batch_size"]
    if args.samples is not None and args.samples < done:
        raise ValueError(
            f"--samples {args.samples} is below the {done} samples the run in {out} has already trained; "
            "give at least that"
        )
    run = read_json(out / RUN) if (out / RUN).is_file() else {}
    recorded = run.get("data", {}) if isinstance(run, dict) else {}
    for key, value in data_options.items():
        if recorded.get("options", {}).get(key) != value:
            raise ValueError(
                f"the data option {key}={value} disagrees with the run in {out} "
                f"({key}={recorded.get('options', {}).get(key)}); drop it to resume on the run's data"
            )

"""What a `--resume` may change in a run's config, and what it may not: the config a run was
started with (RUN/config.yaml) against the one the resuming command line asks for."""
from __future__ import annotations

from pathlib import Path

from resnetlab.config import Config, config_from_dict, config_to_dict
from resnetlab.errors import UserError, option


# Where the decoded images are cached and how many processes decode them: neither changes an image,
# a batch or a step, so a resumed run (a job on another node, its cache on that node's scratch) may
# change them without a word.
INCIDENTAL = ("data.cache_dir", "train.workers")
# How the steps are computed: judged by what they resolve to on this machine (runtime_change), not by their words.
RUNTIME = ("train.device", "train.precision", "train.channels_last", "train.compile", "train.fused_bn")


def run_differences(saved: Config, wanted: Config) -> list[str]:
    """config_differences, less the INCIDENTAL keys."""
    return [d for d in config_differences(saved, wanted) if _key(d) not in INCIDENTAL]


def config_differences(saved: Config, wanted: Config) -> list[str]:
    """'key: saved -> wanted' for every config value that differs (dotted keys)."""
    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    a, b = dict(flat(config_to_dict(saved))), dict(flat(config_to_dict(wanted)))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def resume_changes(saved: Config, wanted: Config, run: str) -> str | None:
    """What `--resume` may change. Values the run's position or state follow from (the data and batch
    size: where in which epoch's shuffle; the seed: the shuffle and the hold-out; the model and its
    fine-tuning: what the checkpoint holds) cannot continue exactly and are refused in one line. The
    schedule and the base lr are functions of the step, recomputed from the current one; any other
    value (precision, momentum ...) applies from here on. Returns the one-line warning that
    says which of those changed (None when none did), warned once the run is accepted."""
    changed = run_differences(saved, wanted)
    # a moved data folder is the same data when its record (RUN/data.json) says so: checked once it is built
    moved = same_path(saved.data.root, wanted.data.root) or (Path(run) / "data.json").is_file()
    reasons = {d: _why_fixed(_key(d), moved) for d in changed}
    refused = [d for d in changed if reasons[d]]
    if refused:
        why = " and ".join(dict.fromkeys(reasons[d] for d in refused))
        instead = ("a new run (--out NEW_RUN)" if any(_key(d) == "model.name" for d in refused)
                   else f"a new run from its weights instead (--init {run} --out NEW_RUN)")
        raise UserError(f"--resume {run} cannot change {'; '.join(refused)}: {why}, so the run would not continue "
                        f"exactly; start {instead}")
    schedule = [d for d in changed if _key(d).startswith("schedule.") or _key(d) == "optim.lr"]
    others = [d for d in changed if d not in schedule and _key(d) not in ("data.root",) + RUNTIME]
    notes = ([f"a new schedule ({'; '.join(schedule)}): the schedule is recomputed from the current step"]
             if schedule else []) + ([f"new values ({'; '.join(others)}): they apply from the current step on, so "
                                      "the run is no longer the one an uninterrupted run would be"] if others else [])
    return f"--resume with {' and with '.join(notes)}" if notes else None


def runtime_change(trained_with: dict | None, now: dict, saved: dict | None, wanted: Config) -> str | None:
    """The warning for a resume that computes its steps otherwise than the run did, judged by what the
    words resolve to: `auto` on another kind of machine (a requeue onto another node: bf16 became fp32
    without a word), or a new --precision; `auto` -> the very precision auto gave is no change.
    Checkpoints older than the record are judged by the words of their config (read as a Config: a key
    it predates holds its default, no change)."""
    if trained_with is None:
        if not saved:
            return None
        before = config_from_dict(saved).train
        trained_with = {k: getattr(before, k.split(".")[1]) for k in RUNTIME}
        now = {k: getattr(wanted.train, k.split(".")[1]) for k in RUNTIME}
    changed = [f"{k}: {trained_with.get(k)!r} -> {v!r}" for k, v in now.items() if trained_with.get(k) != v]
    if not changed:
        return None
    return (f"{option('--resume', 'resume=True')} goes on with {'; '.join(changed)} (`auto` is resolved for each "
            "machine): they apply from the current step on, so the run is no longer the one an uninterrupted run would "
            "be; " + option("--precision, --device and the train.* keys", "the train.* keys (train.precision, "
                            "train.device)") + " set the run's own values")


def _key(difference: str) -> str:
    return difference.split(":", 1)[0]


def _why_fixed(key: str, moved: bool) -> str | None:
    """Why a resumed run cannot take a new value of `key` (None when it can)."""
    if key == "optim.batch_size" or key.startswith("data.") and not (key == "data.root" and moved):
        return "the position in the data depends on it"
    if key == "train.seed":
        return "the shuffle and the validation hold-out follow from the seed"
    if key.startswith(("model.", "finetune.")):
        return "the network and what of it trains come from the run's checkpoint"
    return None


def same_path(a, b) -> bool:
    """Runs saved before data.root was stored absolute hold a relative one."""
    return a is not None and b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()

"""`resnetlab train --data DIR --out RUN` without --recipe: the recipe chosen from the data
(resnetlab.autorecipe), said in one line and kept in the run, its pretrained weights checked first."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from resnetlab.config import load_config
from resnetlab.errors import UserError


def auto_recipe(args, overrides: list) -> tuple[str, list]:
    """No --recipe: one chosen from the data and the machine (resnetlab.autorecipe), said in one
    line on stderr and kept as RUN/auto_recipe.json; the user's flags and --set values win. `choose`
    checks them against the recipe first, so a wrong one is refused before it is said or written."""
    from resnetlab.autorecipe import IMAGENET_WEIGHTS, MachineFacts, choose
    from resnetlab.config import parse_override
    from resnetlab.data.survey import survey
    from resnetlab.engine.datadir import data_overrides
    from resnetlab.engine.distributed import dist_info_from_env
    from resnetlab.engine.rundir import refuse_a_file, refuse_others_files, refuse_out_in_data
    from resnetlab.files import write_text_atomic

    given = dict(overrides) | dict(parse_override(item) for item in args.set)
    found = dict(data_overrides(args.data, "folder"))
    facts = survey(found.get("data.dataset", "folder"), found["data.root"], bool(given.get("data.skip_bad")))
    init = given.get("finetune.init", None if facts.small else IMAGENET_WEIGHTS)
    choice = choose(facts, MachineFacts.detect(), given, init_model(init) if init else None)
    main = dist_info_from_env().is_main
    if main:
        print(f"resnetlab train: {choice.line}", file=sys.stderr, flush=True)
    if args.print_config:  # creates nothing and fetches nothing
        return choice.recipe, list(choice.overrides) + overrides
    refuse_a_file(args.out)  # these three before a download, and before auto_recipe.json is written into it
    a_new_run = not (Path(args.out) / "checkpoints" / "last.pt").exists()  # else the run refuses to start over it
    if a_new_run:
        refuse_out_in_data(args.out, found["data.root"])
        refuse_others_files(Path(args.out))
    if choice.init and a_new_run:  # a run with a checkpoint resumes from it: its init is not read (nor fetched)
        check_init(choice.recipe, choice.init, [*choice.overrides, *given.items()])
    if main and a_new_run:
        write_text_atomic(Path(args.out) / "auto_recipe.json", json.dumps(
            {"recipe": choice.recipe, "overrides": dict(choice.overrides), "data": asdict(facts), "line": choice.line},
            indent=1))
    return choice.recipe, list(choice.overrides) + overrides


def init_model(init: str):
    """The model --init's weights are of (autorecipe.InitModel), where resnetlab can tell without
    guessing: published weights by name, a run or a resnetlab checkpoint, a safetensors export of one,
    a plain weights file whose tensors fit one registered network alone (models.identify); None
    otherwise, or for a file that cannot be read (loading it says why, later)."""
    from resnetlab.autorecipe import InitModel
    from resnetlab.engine.finetune import exported_model_kwargs, exported_model_name
    from resnetlab.engine.sources import find_weights, load_source
    from resnetlab.models import model_info

    try:
        entry = find_weights(init)
        if entry is not None:
            name, kwargs = entry.model, entry.kwargs
        elif str(init).endswith(".safetensors"):
            name, kwargs = exported_model_name(Path(init)), exported_model_kwargs(Path(init))
            name, kwargs = (name, kwargs) if name else _identified(init)
        else:
            try:
                artifact = load_source(init)[0]
                name, kwargs = artifact.model_name, artifact.model_kwargs
            except UserError:
                if not Path(init).is_file():
                    raise
                name, kwargs = _identified(init)  # not a resnetlab checkpoint: maybe plain weights
        return InitModel(name, model_info(name).family == "cifar", tuple(dict(kwargs).items())) if name else None
    except (UserError, OSError, ValueError, TypeError):
        return None


def _identified(path) -> tuple[str | None, dict]:
    """The one registered network a plain weights file fits (in the layout loading would read it in)."""
    from resnetlab.models import layouts
    from resnetlab.models.identify import identify
    from resnetlab.models.weights import read_state_dict

    state = read_state_dict(path)
    fits = identify(layouts.rename(state, layouts.detect(state)))
    return (fits[0].name, dict(fits[0].kwargs)) if len(fits) == 1 else (None, {})


def check_init(recipe: str, init: str, overrides: list) -> None:
    """Load the automatic recipe's pretrained weights once before anything is built or written
    (fetching them to the torch.hub cache if needed), so a machine without them hears at once
    how to get them or do without."""
    from resnetlab.engine.finetune import load_init_weights
    from resnetlab.models import create_model

    cfg = load_config(recipe, overrides)  # the model the run builds: the init's own, or --model
    try:
        load_init_weights(create_model(cfg.model.name, **cfg.model.kwargs), init, cfg.model.name)
    except UserError as err:
        raise UserError(f"{err}. The automatic recipe fine-tunes the ImageNet weights {init}; without them, pass "
                        "--init WEIGHTS_FILE (a copy of them) or train from scratch with --init none") from None

"""Learning-rate schedules against hand-computed values."""
import math

import pytest

from resnetlab.config import ScheduleConfig, load_config
from resnetlab.engine.schedules import (
    ScheduleState, create_learning_rate_fn, observe_train_error, observe_val_error, total_steps,
    warmup_news,
)
from resnetlab.errors import UserError


def test_paper_cifar_step_schedule():
    cfg = load_config("cifar10_resnet20").schedule
    lr, s = create_learning_rate_fn(cfg, 0.1, steps_per_epoch=352), ScheduleState()
    assert [lr(k, s) for k in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert total_steps(cfg, 352) == 64000


def test_resnet110_warmup_waits_for_train_error_then_keeps_the_step_schedule():
    cfg = load_config("cifar10_resnet110").schedule
    lr, s = create_learning_rate_fn(cfg, 0.1, 352), ScheduleState()
    assert lr(1000, s) == 0.01  # still above 80% error: stays in warm-up however long it takes
    observe_train_error(cfg, s, 350, 85.0)
    assert s.warmup_done_step is None
    observe_train_error(cfg, s, 400, 79.0)
    assert s.warmup_done_step == 400 and lr(401, s) == 0.1 and lr(32000, s) == pytest.approx(0.01)
    observe_train_error(cfg, s, 500, 90.0)  # once done, never undone
    assert s.warmup_done_step == 400


def test_linear_warmup_then_cosine_and_onecycle():
    cfg = ScheduleConfig(kind="cosine", max_steps=110, warmup_steps=10, warmup_lr=0.0, final_lr_frac=0.1)
    lr, s = create_learning_rate_fn(cfg, 1.0, 1), ScheduleState()
    assert lr(0, s) == 0.0 and lr(5, s) == pytest.approx(0.5) and lr(10, s) == pytest.approx(1.0)
    assert lr(60, s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr(110, s) == pytest.approx(0.1)
    one = create_learning_rate_fn(ScheduleConfig(kind="onecycle", epochs=2, warmup_steps=10, warmup_lr=0.1), 1.0, 55)
    assert one(5, s) == pytest.approx(0.55) and one(60, s) == pytest.approx(0.5) and one(110, s) == 0.0


def test_milestones_in_epochs():
    cfg = ScheduleConfig(kind="step", epochs=90, milestones=[30, 60], milestones_unit="epochs")
    lr, s = create_learning_rate_fn(cfg, 0.1, 100), ScheduleState()
    assert [lr(k, s) for k in (2999, 3000, 6000)] == pytest.approx([0.1, 0.01, 0.001])


def test_plateau_decays_after_patience_and_its_state_round_trips():
    cfg = ScheduleConfig(kind="plateau", patience=2)
    lr, s = create_learning_rate_fn(cfg, 0.1, 100), ScheduleState()
    for err in (50.0, 40.0, 41.0):
        observe_val_error(cfg, s, err, 100)
    assert lr(0, s) == 0.1
    observe_val_error(cfg, s, 40.0, 100)  # not better than 40: second bad evaluation
    assert s.num_decays == 1 and lr(0, s) == pytest.approx(0.01)
    assert ScheduleState.from_state(s.state_dict()) == s


@pytest.mark.parametrize("warmup", [{"warmup_steps": 20}, {"warmup_until_err": 85.0, "warmup_lr": 0.01}])
def test_plateau_counts_nothing_during_a_warm_up(warmup):
    """Decays counted during a warm-up (whose lr ignores them) dropped the lr 100x the moment it ended."""
    cfg = ScheduleConfig(kind="plateau", patience=1, **warmup)
    lr, s = create_learning_rate_fn(cfg, 0.1, 100), ScheduleState()
    for step, err in ((5, 90.0), (10, 91.0), (15, 92.0)):  # worse and worse while warming up
        observe_val_error(cfg, s, err, step)
    observe_train_error(cfg, s, 20, 80.0)  # (ends the warm-up by error)
    assert s.num_decays == 0 and lr(20, s) == 0.1
    observe_val_error(cfg, s, 80.0, 20)
    observe_val_error(cfg, s, 81.0, 25)  # the first bad evaluation after it
    assert s.num_decays == 1 and lr(25, s) == pytest.approx(0.01)


def test_bad_schedule_config_is_a_user_error():
    with pytest.raises(UserError, match="schedule.kind"):
        create_learning_rate_fn(ScheduleConfig(kind="exp"), 0.1, 10)
    with pytest.raises(UserError, match="milestones_unit"):
        create_learning_rate_fn(ScheduleConfig(milestones_unit="days"), 0.1, 10)
    with pytest.raises(UserError, match="steps"):
        create_learning_rate_fn(ScheduleConfig(max_steps=0), 0.1, 10)


def test_the_error_gated_warm_up_says_when_it_ends_and_once_when_it_holds_a_tenth_of_the_run():
    """A net that never got under the bar (a plain-110) trained at warmup_lr to the end without a word."""
    cfg, s = load_config("cifar10_resnet110").schedule, ScheduleState()
    news = [warmup_news(cfg, s, step - 100, step, 64000, 90.0) for step in range(100, 12900, 100)]
    held = [n for n in news if n]
    assert len(held) == 1 and news.index(held[0]) == 63  # step 6400, a tenth of 64k
    assert "still holds lr at 0.01 after 6400 of 64000 steps" in held[0] and "warmup_until_err=null" in held[0]
    observe_train_error(cfg, s, 13000, 79.5)
    assert warmup_news(cfg, s, 12900, 13000, 64000, 79.5) == ("warm-up ended at step 13000: training error 79.5% < 80%, "
                                                              "so lr leaves 0.01")
    assert warmup_news(cfg, s, 13000, 13100, 64000, 70.0) is None
    assert warmup_news(load_config("cifar10_resnet20").schedule, ScheduleState(), 6300, 6400, 64000, 90.0) is None


def test_a_run_says_the_warm_up_holds_once_when_a_validation_falls_between_log_points(tmp_path):
    """The line came at the first log point past a tenth of the run and again at the validation just after it."""
    import io

    from test_engine_train import tiny_config

    from resnetlab.engine import train_and_evaluate

    cfg = tiny_config(("schedule.warmup_until_err", 0.5), ("schedule.warmup_lr", 0.01), ("schedule.max_steps", 50),
                      ("train.log_every", 4), ("train.eval_every", 5))  # a tenth is step 5: the validation, then log 8
    out = io.StringIO()
    train_and_evaluate(cfg, tmp_path, stream=out)
    assert out.getvalue().count("the warm-up still holds lr at 0.01 after 5 of 50 steps") == 1
    assert out.getvalue().count("the warm-up still holds") == 1

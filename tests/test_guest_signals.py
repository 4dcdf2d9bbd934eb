"""train_and_evaluate(..., handle_signals=False): a host process (a service) keeps its own signal
handlers during training, and they are called; by default training still takes SIGINT/SIGTERM/SIGHUP."""
import os
import signal

import pytest

from resnetlab.engine import TrainingInterrupted, train_and_evaluate
from resnetlab.engine import train as train_module
from resnetlab.errors import UserError
from test_engine_train import tiny_config

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture
def service_handler():
    """A service's SIGHUP handler ("reopen the logs"), recording its calls."""
    calls = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))
    try:
        yield calls
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.fixture
def hangup_at_step_3(monkeypatch):
    """A SIGHUP sent to the process during step 3; the handlers seen by the steps, recorded."""
    seen, steps, real_step = [], [], train_module.train_step

    def step(parts, x, y):
        steps.append(1)
        seen.append({sig: signal.getsignal(sig) for sig in SIGNALS})
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGHUP)
        return real_step(parts, x, y)
    monkeypatch.setattr(train_module, "train_step", step)
    return seen


def test_with_handle_signals_false_the_services_handler_stays_and_is_called(tmp_path, service_handler,
                                                                             hangup_at_step_3):
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    summary = train_and_evaluate(tiny_config(), tmp_path / "run", handle_signals=False)
    assert summary is not None and (tmp_path / "run" / "summary.json").is_file()  # the hangup did not stop it
    assert service_handler == [signal.SIGHUP]
    assert all(handlers == before for handlers in hangup_at_step_3)  # nothing was replaced, even for a moment
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before


def test_by_default_training_still_stops_on_a_hangup(tmp_path, service_handler, hangup_at_step_3):
    before = signal.getsignal(signal.SIGHUP)
    with pytest.raises(TrainingInterrupted, match="SIGHUP at step 3"):
        train_and_evaluate(tiny_config(), tmp_path / "run")
    assert service_handler == [] and signal.getsignal(signal.SIGHUP) is before  # taken, then given back


def test_handle_signals_takes_a_bool(tmp_path):
    with pytest.raises(UserError, match="handle_signals takes True or False"):
        train_and_evaluate(tiny_config(), tmp_path / "run", handle_signals="no")

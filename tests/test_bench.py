"""The study-efficiency benchmark's counting rule and its interval, on hand-computed cases."""

import datetime
import importlib.util
import math
from pathlib import Path

import optuna
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "study_efficiency.py"


@pytest.fixture(scope="module")
def efficiency():
    spec = importlib.util.spec_from_file_location("study_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trial(values: list[float], seconds: float, state=optuna.trial.TrialState.COMPLETE):
    start = datetime.datetime(2026, 1, 1)
    return (
        optuna.trial.create_trial(
            state=state,
            value=max(values) if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values=dict(enumerate(values)),
            distributions={},
            params={},
        ),
        start,
        start + datetime.timedelta(seconds=seconds),
    )


def _study(trials) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for frozen, start, end in trials:
        frozen.datetime_start, frozen.datetime_complete = start, end
        study.add_trial(frozen)
    return study


def test_cost_counts_epochs_in_trial_order_until_the_target(efficiency):
    study = _study(
        [
            _trial([0.5, 0.6, 0.65], 30.0),  # 3 epochs, 30 s, never reaches 0.9
            _trial([0.4, 0.45], 10.0, optuna.trial.TrialState.PRUNED),  # 2 epochs, 10 s
            _trial([0.8, 0.92, 0.95, 0.96], 40.0),  # reaches 0.9 in its 2nd epoch: + 2, + 20 s
            _trial([0.99], 5.0),  # later trials do not count
        ]
    )
    epochs, seconds = efficiency.cost_to_target(study, 0.9)
    assert epochs == 3 + 2 + 2
    assert seconds == pytest.approx(30 + 10 + 40 * 2 / 4)
    epochs, seconds = efficiency.cost_to_target(study, 0.995)
    assert math.isinf(epochs) and seconds == pytest.approx(85.0)


def test_median_interval_uses_binomial_order_statistics(efficiency):
    # n = 10: P(X <= 1) = 11/1024 <= 0.025 < P(X <= 2) = 56/1024, so x(2) and x(9).
    assert efficiency.median_interval(list(range(10, 0, -1))) == (2, 9)
    # n = 20: P(X <= 5) = 0.0207 <= 0.025 < P(X <= 6) = 0.0577, so x(6) and x(15).
    assert efficiency.median_interval([*range(1, 20), math.inf]) == (6, 15)
    # n = 5: even x(1)..x(5) covers only 1 - 2/32 < 95 %.
    assert all(math.isnan(v) for v in efficiency.median_interval([1, 2, 3, 4, 5]))

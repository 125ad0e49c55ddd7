"""The training steps are one module that knows nothing of what it trains: fine-tuning and
pre-training take theirs from it, and it imports neither."""

import subprocess
import sys

import optuna
import pytest

from ggt_search.metrics import HIGHER_IS_BETTER, is_better, study_direction


def test_the_steps_import_neither_the_trainer_nor_pre_training():
    code = (
        "import sys, ggt_search.steps; "
        "loaded = [m for m in ('ggt_search.train', 'ggt_search.pretrain', 'ggt_search.datasets') "
        "if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("metric", sorted(HIGHER_IS_BETTER))
def test_the_better_score_is_the_one_an_optuna_study_of_the_metric_keeps_as_best(metric):
    """Model selection (is_better) and a study's best trial (study_direction) agree on every metric."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=study_direction(metric))
    for value in (0.4, 0.7):
        study.optimize(lambda trial, value=value: value, n_trials=1)
    better = 0.7 if is_better(metric, 0.7, 0.4) else 0.4
    assert study.best_value == better
    assert not is_better(metric, better, better)  # ties are not improvements: the earlier epoch stays selected

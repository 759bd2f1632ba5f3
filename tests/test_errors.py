"""The error classes (``lr_core.errors``): one-line messages, exit codes, pickling across
actors, and the "did you mean" tail of an unknown name."""
import pickle

import pytest

from lr_core import errors


@pytest.mark.parametrize("cls,code", [(errors.LrjobError, 1), (errors.LrjobInputError, 2), (errors.SpecError, 2),
                                      (errors.DataError, 2), (errors.LrjobRuntimeError, 1),
                                      (errors.TrainingError, 1), (errors.DivergenceError, 1),
                                      (errors.ClusterError, 1), (errors.WorkerFailure, 1)])
def test_errors_are_one_line_exceptions_that_pickle(cls, code):
    e = cls("train.epochs must be >= 1, got 0")
    assert str(e) == e.message == "train.epochs must be >= 1, got 0"
    assert e.args == ("train.epochs must be >= 1, got 0",)
    assert e.exit_code == code
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.args == e.args


def test_worker_failure_names_rank_node_and_epoch():
    e = errors.WorkerFailure("rank 1 died", rank=1, node="10.0.0.2", last_epoch=3)
    assert (e.rank, e.node, e.last_epoch, str(e)) == (1, "10.0.0.2", 3, "rank 1 died")
    back = pickle.loads(pickle.dumps(e))
    assert (back.rank, back.node, back.last_epoch, str(back)) == (1, "10.0.0.2", 3, "rank 1 died")
    bare = errors.WorkerFailure("lost")
    assert (bare.rank, bare.node, bare.last_epoch) == (None, None, None)


@pytest.mark.parametrize("word,want", [
    ("seperation", "; did you mean 'separation'?"),
    ("n_trian", "; did you mean 'n_train'?"),           # the closest of several near names
    ("zz", "; allowed: n_train, n_val, separation"),
])
def test_an_unknown_name_gets_its_nearest_match_or_the_allowed_ones(word, want):
    assert errors.suggest(word, iter(["n_train", "n_val", "separation"])) == want

import pytest
import torch

from llm_distill.features import Projections, resolve_layer_map


@pytest.mark.parametrize(
    ("n", "m", "expected"),
    [
        (12, 4, [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]),
        (6, 2, [(0, 0), (1, 3), (2, 6)]),
    ],
)
def test_uniform_divisible(n, m, expected):
    assert resolve_layer_map("uniform", m, n) == expected
    # Attention maps have no embeddings layer.
    assert resolve_layer_map("uniform", m, n, include_embeddings=False) == expected[1:]


def test_uniform_not_divisible_is_an_error_that_gives_the_rounded_map():
    with pytest.raises(ValueError) as err:
        resolve_layer_map("uniform", 4, 6)
    msg = str(err.value)
    assert "6 layers are not a multiple of the student's 4" in msg
    assert "teacher layers 1, 3, 4, 6" in msg
    assert "layer_map=[[0, 0], [1, 1], [2, 3], [3, 4], [4, 6]]" in msg


def test_uniform_not_divisible_non_strict_warns_and_rounds_down():
    with pytest.warns(UserWarning, match="teacher layers 1, 3, 4, 6"):
        pairs = resolve_layer_map("uniform", 4, 6, strict=False)
    assert pairs == [(0, 0), (1, 1), (2, 3), (3, 4), (4, 6)]


@pytest.mark.parametrize(("n", "m"), [(12, 4), (6, 2), (6, 4)])
def test_last_is_the_single_top_pair(n, m):
    assert resolve_layer_map("last", m, n) == [(m, n)]
    assert resolve_layer_map("last", m, n, include_embeddings=False) == [(m, n)]


@pytest.mark.parametrize(("n", "m"), [(12, 4), (6, 2), (6, 4)])
def test_explicit_map_is_validated_and_sorted(n, m):
    spec = [[m, n], [1, 1], [0, 0]]
    assert resolve_layer_map(spec, m, n) == [(0, 0), (1, 1), (m, n)]
    # Tuples (Python) and lists (YAML) are both accepted; several students may share one teacher layer.
    assert resolve_layer_map(((1, n), (2, n)), m, n) == [(1, n), (2, n)]


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ([[5, 1]], {}, r"student layer 5 is out of range; valid student layers are 0\.\.4"),
        ([[1, 13]], {}, r"teacher layer 13 is out of range; valid teacher layers are 0\.\.12"),
        ([[-1, 0]], {}, r"student layer -1 is out of range"),
        ([[0, 0]], {"include_embeddings": False}, r"valid student layers are 1\.\.4 \(layer 0, the embeddings"),
        ([[1, 0]], {"include_embeddings": False}, r"valid teacher layers are 1\.\.12"),
        ([[1, 3], [1, 6]], {}, r"student layer\(s\) \[1\] more than once"),
        ([[1, 3, 4]], {}, r"is not a \[student_layer, teacher_layer\] pair"),
        ([[1, 2.0]], {}, r"is not a \[student_layer, teacher_layer\] pair"),
        ([["1", 2]], {}, r"is not a \[student_layer, teacher_layer\] pair"),
        ([], {}, "explicit layer map is empty"),
        ("every_other", {}, "layer map 'every_other' is not known; expected 'uniform', 'last'"),
        (3, {}, "must be 'uniform', 'last' or a list"),
    ],
)
def test_bad_maps_fail_clearly(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_layer_map(spec, 4, 12, **kwargs)


def test_bad_layer_counts():
    with pytest.raises(ValueError, match="num_student_layers=0 must be a positive int"):
        resolve_layer_map("uniform", 0, 12)


def test_projections_per_layer_shared_and_identity():
    x = torch.randn(2, 3, 8)
    per_layer = Projections([0, 2, 4], 8, 16)
    assert set(per_layer.proj.keys()) == {"layer_0", "layer_2", "layer_4"}
    assert per_layer(x, 2).shape == (2, 3, 16)
    assert not torch.allclose(per_layer(x, 2), per_layer(x, 4))
    with pytest.raises(KeyError, match="no projection for student layer 1"):
        per_layer(x, 1)
    with pytest.raises(ValueError, match="width 5"):
        per_layer(torch.randn(2, 3, 5), 2)

    shared = Projections([0, 2, 4], 8, 16, shared=True)
    assert list(shared.proj.keys()) == ["shared"]
    assert torch.equal(shared(x, 2), shared(x, 4))

    same = Projections([1, 2], 8, 8)
    assert len(list(same.parameters())) == 0 and same(x, 1) is x

    forced = Projections([1, 2], 8, 8, project_equal_widths=True)
    assert len(list(forced.parameters())) == 4
    torch.testing.assert_close(forced(x, 1), x)

import pytest

from rlprune.errors import ConfigError
from rlprune.policy import Choice, Pattern, Policy


def test_choice_density_and_label():
    choice = Choice(Pattern.NM, keep=2, group=4, w_bits=8, a_bits=8)
    assert choice.density == 0.5
    assert choice.sparsity == 0.5
    assert choice.label() == "nm 2:4 w8a8"
    assert Choice().density == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pattern": "nm", "keep": 5, "group": 4}, "keep must be in"),
        ({"pattern": "nm", "keep": 0, "group": 4}, "keep must be in"),
        ({"w_bits": 7}, "w_bits=7 is not supported"),
        ({"a_bits": 1}, "a_bits=1 is not supported"),
    ],
)
def test_choice_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Choice(**kwargs)


def test_policy_round_trip_keeps_order_and_values():
    policy = Policy.of(
        {
            "conv2": Choice(Pattern.NM, 2, 4, 8, 8),
            "fc1": Choice(Pattern.KOFN_WEIGHT, 3, 10, 4, 4),
            "fc2": Choice(),
        }
    )
    again = Policy.from_dict(policy.to_dict())
    assert again == policy
    assert [name for name, _ in again] == ["conv2", "fc1", "fc2"]
    assert hash(again) == hash(policy)
    assert again.get("missing") == Choice()


def test_policy_from_dict_rejects_unknown_pattern_and_keys():
    with pytest.raises(ConfigError, match="unknown pattern 'zigzag'"):
        Policy.from_dict({"fc": {"pattern": "zigzag", "keep": 1, "group": 2}})
    with pytest.raises(ConfigError, match="unknown keys"):
        Policy.from_dict({"fc": {"pattern": "dense", "colour": "red"}})


def test_an_alias_is_stored_as_the_canonical_name():
    choice = Choice("transposable", 2, 4)
    assert choice.pattern is Pattern.NM_TRANSPOSABLE and choice == Choice(Pattern.NM_TRANSPOSABLE, 2, 4)
    read = Policy.from_dict({"fc": {"pattern": "kofn", "keep": 3, "group": 10}})
    assert read.to_dict()["fc"]["pattern"] == "kofn_weight"
    assert choice.spec.n_of_m and not Choice().spec.sparse and Choice().label() == "dense w32a32"

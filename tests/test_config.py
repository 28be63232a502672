import dataclasses
from typing import Literal, Optional

import pytest

from clipforge.config import ConfigError, apply_overrides, from_dict, to_dict


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    name: Optional[str] = None
    steps: int = 10


def test_round_trip_and_overrides():
    cfg = from_dict(Outer, {"inner": {"lr": 2, "sizes": [3, 4]}, "steps": 5})
    assert cfg.inner.lr == 2.0 and cfg.inner.sizes == (3, 4) and cfg.steps == 5
    assert from_dict(Outer, to_dict(cfg)) == cfg
    new = apply_overrides(cfg, ["inner.lr=3e-4", "name=run1", "inner.kind=b"])
    assert new.inner.lr == 3e-4 and new.name == "run1" and new.inner.kind == "b"
    assert cfg.inner.lr == 2.0  # the original is untouched


@pytest.mark.parametrize("bad, needle", [
    (["inner.lrr=1"], "inner.lrr"),
    (["steps=abc"], "steps"),
    (["inner.kind=c"], "inner.kind"),
    (["steps"], "key=value"),
])
def test_bad_overrides_name_the_key(bad, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        apply_overrides(Outer(), bad)


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="Did you mean: steps"):
        from_dict(Outer, {"stepz": 1})

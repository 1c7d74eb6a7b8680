"""Input -> shard unit mapping is deterministic and keeps splits apart."""
import pytest

from builders.common.inputs import SourceItem
from builders.common.plan import hashed_split, item_key, plan_units


def _items(n, split=None):
    return [SourceItem(rel=f"c{i % 3}/img {i}.png", path=f"/x/{i}.png", split=split) for i in range(n)]


def test_keys_are_safe_and_unique():
    assert item_key("a b/c.d/img.1.png") == "a-b_c-d_img-1"
    with pytest.raises(ValueError, match="both map to key"):
        plan_units([SourceItem(rel="a/b.png", path="1"), SourceItem(rel="a/b.jpg", path="2")],
                   images_per_shard=4)


def test_units_are_deterministic_and_sized():
    items = _items(10)
    a = plan_units(items, images_per_shard=4)
    b = plan_units(list(reversed(items)), images_per_shard=4)
    assert [(u.name, [k for k, _ in u.items]) for u in a] == [(u.name, [k for k, _ in u.items]) for u in b]
    assert [len(u.items) for u in a] == [4, 4, 2]
    assert a[0].name == "real-train-000000.tar"


def test_splits_stay_apart_and_hash_is_stable():
    items = _items(40)
    units = plan_units(items, images_per_shard=8, val_fraction=0.25, test_fraction=0.25, seed=1)
    for u in units:
        assert u.name.startswith(f"real-{u.split}-")
        for k, _ in u.items:
            assert hashed_split(k, seed=1, val_fraction=0.25, test_fraction=0.25) == u.split
    counts = {s: sum(len(u.items) for u in units if u.split == s) for s in ("train", "val", "test")}
    assert sum(counts.values()) == 40 and all(5 <= c <= 30 for c in counts.values()), counts
    named = plan_units(_items(4, split="test"), images_per_shard=8, val_fraction=0.5)
    assert {u.split for u in named} == {"test"}

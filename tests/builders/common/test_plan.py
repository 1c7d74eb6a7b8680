"""Input -> shard unit mapping is deterministic and keeps splits apart."""
import pytest

from builders.common.inputs import SourceItem
from builders.common.plan import hashed_split, item_key, plan_digest, plan_units


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


def _class_sorted(n_classes=10, per_class=20):
    return [SourceItem(rel=f"class{c:02d}/img{i:03d}.png", path=f"/x/{c}_{i}.png", cls=f"class{c:02d}")
            for c in range(n_classes) for i in range(per_class)]


def test_permuted_units_mix_classes_of_a_class_sorted_input():
    items = _class_sorted()
    mixed = plan_units(items, images_per_shard=20, seed=3)
    sorted_ = plan_units(items, images_per_shard=20, order="sorted")
    assert all(len({it.cls for _, it in u.items}) == 1 for u in sorted_)  # the old layout
    per_unit = sorted(len({it.cls for _, it in u.items}) for u in mixed)
    assert per_unit[0] >= 5, per_unit  # 20 draws from 10 classes: expected ~8.8 distinct
    # Deterministic, independent of input order, and the seed changes the permutation.
    again = plan_units(list(reversed(items)), images_per_shard=20, seed=3)
    assert [[k for k, _ in u.items] for u in mixed] == [[k for k, _ in u.items] for u in again]
    other = plan_units(items, images_per_shard=20, seed=4)
    assert [[k for k, _ in u.items] for u in mixed] != [[k for k, _ in u.items] for u in other]
    assert plan_digest(mixed) == plan_digest(again) != plan_digest(other)


def test_augmentations_spread_over_units_each_written_once():
    items = _class_sorted(4, 10)
    units = plan_units(items, images_per_shard=5, augmentations=5, spread=3, seed=0)
    where: dict[str, list] = {}
    for u in units:
        keys = [k for k, *_ in u.work()]
        assert len(keys) == len(set(keys)), "a unit decodes each source once"
        for k, _, _, augs in u.work():
            where.setdefault(k, []).extend((u.index, a) for a in augs)
    for k, placed in where.items():
        assert sorted(a for _, a in placed) == [0, 1, 2, 3, 4], k
        owner = next(u.index for u in units for kk, _ in u.items if kk == k)
        assert len({i for i, _ in placed} | {owner}) == 3, (k, placed)
    # Balanced: every unit writes 5 originals and 25 augmentations.
    assert {sum(len(a) for *_, a in u.work()) for u in units} == {25}
    one = plan_units(items, images_per_shard=5, augmentations=5, spread=1)
    assert all(not u.borrowed and all(u.augs[k] == (0, 1, 2, 3, 4) for k, _ in u.items) for u in one)
    # A changed assignment is a changed plan.
    assert plan_digest(units) != plan_digest(plan_units(items, images_per_shard=5, augmentations=5,
                                                        spread=2, seed=0))
    with pytest.raises(ValueError, match="spread"):
        plan_units(items, images_per_shard=5, spread=0)
    with pytest.raises(ValueError, match="order"):
        plan_units(items, images_per_shard=5, order="random")

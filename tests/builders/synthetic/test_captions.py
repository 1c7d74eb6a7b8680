"""Caption edits of the generation modes: each stays true of the edited image."""
import pytest

from builders.synthetic.captions import (
    add_variant,
    append_object,
    count_phrase,
    find_mentions,
    plural,
    remove_object,
    replace_object,
    singular,
    strip_positions,
)


@pytest.mark.parametrize("noun,pl", [("car", "cars"), ("bus", "buses"), ("storage tank", "storage tanks"),
                                     ("factory", "factories"), ("church", "churches"),
                                     ("person", "people"), ("swimming pool", "swimming pools"),
                                     ("roof", "roofs"), ("greenhouse", "greenhouses"),
                                     ("house", "houses"), ("warehouse", "warehouses"),
                                     ("golf course", "golf courses")])
def test_plural_and_singular_round_trip(noun, pl):
    assert plural(noun) == pl
    assert singular(pl) == noun
    assert singular(noun) == noun


def test_count_phrases():
    assert count_phrase(1, "truck") == "a truck"
    assert count_phrase(1, "airplane") == "an airplane"
    assert count_phrase(3, "truck") == "three trucks"
    assert count_phrase(14, "truck") == "14 trucks"
    assert count_phrase(2, "bus", digits=True) == "2 buses"


def test_mentions_read_counts_modifiers_and_vague_plurals():
    ms = find_mentions("Three white cars, a car and some cars near 12 cars.", "car")
    assert [(m.count, m.modifiers.strip(), m.is_plural) for m in ms] == [
        (3, "white", True), (1, "", False), (None, "", True), (12, "", True)]
    assert ms[3].digits
    # a preposition is never taken for a modifier
    assert find_mentions("a parking lot with cars", "car")[0].det == ""
    assert find_mentions("a road and two houses", "car") == []


@pytest.mark.parametrize("caption,label,new,k,expected", [
    ("An aerial view of a parking lot with three white cars in the upper left.", "car", "truck", 3,
     "An aerial view of a parking lot with three trucks in the upper left."),
    ("An aerial view of a parking lot with three cars in the upper left.", "car", "truck", 1,
     "An aerial view of a parking lot with two cars and a truck in the upper left."),
    ("A car on the road next to a tree.", "car", "bus", 1, "A bus on the road next to a tree."),
    ("Many cars are parked near the building.", "car", "truck", 5,
     "Many trucks are parked near the building."),
    ("Two storage tanks and a road.", "storage tank", "building", 2, "Two buildings and a road."),
    ("12 houses along a river", "house", "tree", 12, "12 trees along a river"),
    ("A house beside an orchard.", "house", "airplane hangar", 1,
     "An airplane hangar beside an orchard."),
    ("Cars on a road.", "car", "truck", 2, "Trucks on a road."),
])
def test_replace_keeps_counts_and_positions(caption, label, new, k, expected):
    assert replace_object(caption, label, new, replaced=k) == expected


def test_replace_of_an_unnamed_label_adds_a_clause_with_its_position():
    assert replace_object("An aerial view of a parking lot.", "car", "truck", replaced=2) is None
    assert append_object("An aerial view of a parking lot.", "truck", 2, "in the upper left") == \
        "An aerial view of a parking lot, with two trucks in the upper left."
    assert append_object("A field with a barn.", "pond", 1, "at the center") == \
        "A field with a barn, and a pond at the center."


@pytest.mark.parametrize("caption,label,removed,detected,expected", [
    ("An aerial view of a parking lot with three cars in the upper left.", "car", 1, 3,
     "An aerial view of a parking lot with two cars in the upper left."),
    ("An aerial view of a parking lot with 3 cars.", "car", 2, 3,
     "An aerial view of a parking lot with 1 car."),
    ("An aerial view of a road with a car.", "car", 1, 1, "An aerial view of a road."),
    ("An aerial view of a road with a car in the lower right.", "car", 1, 1,
     "An aerial view of a road."),
    ("A pond, a tree and a house.", "tree", 1, 1, "A pond and a house."),
    ("A pond, a tree and a house.", "house", 1, 1, "A pond and a tree."),
    ("A pond, a tree and a house.", "pond", 1, 1, "A tree and a house."),
    ("A road and a car.", "car", 1, 1, "A road."),
    ("A car and a road.", "car", 1, 1, "A road."),
    ("Cars on a road.", "car", 1, 3, "Cars on a road."),
    ("Cars on a road.", "car", 1, 2, "A car on a road."),
    ("A farmland with a pond and some trees.", "pond", 1, 1, "A farmland with some trees."),
    ("a beach with sand and two boats", "boat", 1, 2, "A beach with sand and a boat"),
    ("Two houses, one car and a pool.", "car", 1, 1, "Two houses and a pool."),
    ("A forest with a lake.", "car", 1, 2, "A forest with a lake."),     # not named: unchanged
    ("Two small houses by a road.", "house", 1, 2, "A small house by a road."),
])
def test_remove_decreases_counts(caption, label, removed, detected, expected):
    assert remove_object(caption, label, removed=removed, detected=detected) == expected


@pytest.mark.parametrize("caption", ["A car.", "There is a car in the parking lot.", "Cars."])
def test_remove_returns_none_when_nothing_true_is_left(caption):
    assert remove_object(caption, "car", removed=5, detected=5) is None


def test_remove_needs_a_positive_count():
    with pytest.raises(ValueError, match="0"):
        remove_object("A car.", "car", removed=0, detected=1)


def test_variant_phrase_is_appended():
    assert add_variant("An aerial view of a forest.", "in winter, covered in snow") == \
        "An aerial view of a forest, in winter, covered in snow."
    assert add_variant("a river", "at dusk.") == "A river, at dusk."
    with pytest.raises(ValueError):
        add_variant("a river", "  ")


@pytest.mark.parametrize("caption,expected", [
    ("An aerial view of a vegetated area, with trees or shrubs in the upper left and open water "
     "along the bottom.", "An aerial view of a vegetated area, with trees or shrubs and open water."),
    ("Water in the lower half and sand on the right side.", "Water and sand."),
    ("A harbour with boats scattered across the image.", "A harbour with boats."),
    ("A dense forest.", "A dense forest."),
    ("In the upper left.", None),
])
def test_strip_positions(caption, expected):
    assert strip_positions(caption) == expected

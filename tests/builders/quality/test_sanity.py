from builders.quality.sanity import count_score, parse_count_claims, parse_spatial_claims, sanity_scores

LEFT = {"box": [0.0, 0.2, 0.3, 0.5], "label": "building"}
RIGHT = {"box": [0.7, 0.2, 0.95, 0.5], "label": "building"}
WATER = {"box": [0.3, 0.6, 0.7, 0.95], "label": "water"}


def test_count_claims_find_number_word_and_noun():
    claims = parse_count_claims("three large white storage tanks and several tennis courts")
    assert [(c.word, c.noun, c.lo, c.hi) for c in claims] == [
        ("three", "tank", 3, 3), ("several", "court", 3, 7)]
    assert parse_count_claims("an aerial image of agricultural land") == []


def test_count_score_exact_and_decay():
    (two,) = parse_count_claims("two buildings")
    assert count_score(two, [LEFT, RIGHT, WATER]) == 1.0  # only the building boxes are counted
    (five,) = parse_count_claims("five buildings")
    assert count_score(five, [LEFT, RIGHT]) == (1 + 2) / (1 + 5)
    (many,) = parse_count_claims("many cars")
    assert count_score(many, [LEFT] * 9) == 1.0  # unlabelled match falls back to all boxes


def test_spatial_claims_prefer_corner_phrases():
    claims = parse_spatial_claims("a river on the left and a forest in the upper right")
    assert sorted(c.phrase for c in claims) == ["left", "upper right"]
    assert {c.phrase: c.noun for c in claims} == {"left": "river", "upper right": "forest"}


def test_sanity_scores_agree_and_disagree():
    good = sanity_scores("two buildings, one on the left", [LEFT, RIGHT])
    assert good == {"sanity": 1.0, "sanity_count": 1.0, "sanity_spatial": 1.0}
    bad = sanity_scores("water at the top", [WATER])
    assert bad["sanity_spatial"] == 0.0 and bad["sanity_count"] is None and bad["sanity"] == 0.0


def test_no_claims_or_no_boxes_is_unverifiable():
    assert sanity_scores("an aerial image of a beach", [LEFT]) == {
        "sanity": None, "sanity_count": None, "sanity_spatial": None}
    assert sanity_scores("a road in the center", [])["sanity_spatial"] is None
    # a count against zero boxes is checkable (and wrong)
    assert sanity_scores("three ships", [])["sanity_count"] == 0.25


def test_b2c_wording_matches_m2b_labels_across_all_captions():
    veg_right = {"box": [0.6, 0.1, 1.0, 0.9], "label": "vegetation"}
    road_left = {"box": [0.0, 0.1, 0.3, 0.9], "label": "road"}
    captions = ["an aerial image of a beach",
                "An aerial view with trees or shrubs on the right and smooth grey surfaces along the left side."]
    assert sanity_scores(captions, [veg_right, road_left])["sanity_spatial"] == 1.0
    flipped = ["An aerial view with trees or shrubs on the left."]
    assert sanity_scores(flipped, [veg_right, road_left])["sanity_spatial"] == 0.0


def test_a_synthetic_edits_verification_joins_the_sanity_mean():
    boxes = [{"box": [0.0, 0.0, 0.3, 0.3], "label": "truck"}, {"box": [0.6, 0.6, 0.9, 0.9], "label": "truck"}]
    caption = "two trucks in a parking lot"
    assert "sanity_verify" not in sanity_scores(caption, boxes)
    ok = sanity_scores(caption, boxes, {"ok": True})
    bad = sanity_scores(caption, boxes, {"ok": False})
    assert ok["sanity_verify"] == 1.0 and ok["sanity"] == 1.0
    assert bad["sanity_verify"] == 0.0 and bad["sanity"] == 0.5   # count 1.0, verify 0.0
    assert sanity_scores("a field", [], {"ok": False})["sanity"] == 0.0

"""Input readers and RGB loading of awkward image files."""
import json

import numpy as np
import pytest
from PIL import Image

from builders.common.inputs import UnreadableImage, load_rgb, read_items


def test_folder_tree_classes(demo_tree):
    items = read_items(demo_tree)
    assert len(items) == 10
    assert {it.cls for it in items} == {"water", "forest", "urban", "farmland", "beach"}
    assert all(it.captions == [] and it.split is None for it in items)
    assert items[0].rel == "beach/beach_000.png"


def test_karpathy_json_keeps_every_caption_and_split(tmp_path):
    data = {"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "one"}, {"raw": "two  words"}]},
        {"filename": "b.jpg", "filepath": "sub", "split": "restval", "sentences": [{"raw": "x"}]},
        {"filename": "c.jpg", "split": "test", "sentences": [{"tokens": ["t", "k"]}]},
    ]}
    p = tmp_path / "dataset_rsicd.json"
    p.write_text(json.dumps(data))
    items = read_items(p, image_root=tmp_path / "imgs")
    assert [it.captions for it in items] == [["one", "two words"], ["x"], ["t k"]]
    assert [it.split for it in items] == ["train", "train", "test"]
    assert items[1].path == str(tmp_path / "imgs" / "sub" / "b.jpg")


def test_csv_rows_merge_captions_and_tsv(tmp_path):
    (tmp_path / "t.csv").write_text("filepath,title,class\na.png,first,x\nb.png,other,y\na.png,second,x\n")
    items = read_items(tmp_path / "t.csv")
    assert [(it.rel, it.captions, it.cls) for it in items] == [
        ("a.png", ["first", "second"], "x"), ("b.png", ["other"], "y")]
    (tmp_path / "t.tsv").write_text("image\tcaption_1\tcaption_2\tsplit\na.png\tp\tq\tval\n")
    (it,) = read_items(tmp_path / "t.tsv")
    assert it.captions == ["p", "q"] and it.split == "val"


def test_jsonl_with_boxes(tmp_path):
    box = {"box": [0.1, 0.1, 0.3, 0.3], "label": "car", "score": 0.9, "source": "detector"}
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "a.png", "caption": "c", "boxes": [box]}) + "\n\n")
    (it,) = read_items(tmp_path / "c.jsonl")
    assert it.captions == ["c"] and it.boxes == [box]


@pytest.mark.parametrize("text,match", [
    ('{"image": "a.png", "split": "holdout"}', "holdout"),
    ('{"caption": "no image"}', "no image field"),
    ("{not json", "invalid JSON"),
])
def test_bad_records_name_the_problem(tmp_path, text, match):
    (tmp_path / "c.jsonl").write_text(text + "\n")
    with pytest.raises(ValueError, match=match):
        read_items(tmp_path / "c.jsonl")


def test_unsupported_and_missing_inputs(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="unsupported input"):
        read_items(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="nope"):
        read_items(tmp_path / "nope")
    with pytest.raises(ValueError, match="no image column"):
        (tmp_path / "t.csv").write_text("foo,caption\n")
        read_items(tmp_path / "t.csv")


def _grad(shape, hi, dtype):
    return (np.linspace(0, hi, int(np.prod(shape))).reshape(shape)).astype(dtype)


def test_awkward_modes_become_rgb(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    g16 = _grad((16, 16), 4095, np.uint16)  # 12-bit data in a 16-bit container
    tifffile.imwrite(tmp_path / "g16.tif", g16)
    rgb16 = _grad((16, 16, 3), 65535, np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 0] = 255  # pure cyan
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("L", (16, 16), 77).save(tmp_path / "gray.jpg")
    Image.new("P", (16, 16), 3).save(tmp_path / "pal.png")
    for name in ("g16.tif", "rgb16.tif", "cmyk.tif", "clear.png", "cmyk.jpg", "gray.jpg", "pal.png"):
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (16, 16), name
    g = np.asarray(load_rgb(tmp_path / "g16.tif"))
    assert g.max() >= 250, "12-bit data must be stretched, not divided by 257"
    c = np.asarray(load_rgb(tmp_path / "cmyk.tif"))[0, 0]
    assert c[0] < 30 and c[1] > 200 and c[2] > 200, c  # cyan
    assert np.asarray(load_rgb(tmp_path / "clear.png")).max() == 0  # transparent -> black
    m = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))[0, 0]
    assert m[1] < 60 and m[0] > 180, m  # magenta


def test_unreadable_files_give_reasons(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UnreadableImage) as e:
        load_rgb(tmp_path / "bad.jpg")
    assert e.value.reason == "decode_error"
    good = tmp_path / "t.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    with pytest.raises(UnreadableImage):
        load_rgb(tmp_path / "trunc.jpg")
    with pytest.raises(UnreadableImage) as e:
        load_rgb(tmp_path / "missing.png")
    assert e.value.reason == "missing_file"


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "o.jpg").size == (20, 40)


@pytest.mark.parametrize("mode,value", [("CMYK", (0, 255, 0, 0)), ("L", 77), ("RGB", (10, 200, 30))])
def test_jpeg_draft_downscale_keeps_colours(tmp_path, mode, value):
    Image.new(mode, (600, 520), value).save(tmp_path / "big.jpg", quality=95)
    full = np.asarray(load_rgb(tmp_path / "big.jpg"))[0, 0].astype(int)
    img = load_rgb(tmp_path / "big.jpg", draft_size=128)
    assert img.mode == "RGB" and min(img.size) >= 128 and img.size[0] < 600
    assert np.abs(np.asarray(img)[0, 0].astype(int) - full).max() <= 6

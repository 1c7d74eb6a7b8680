"""End to end: real tiny shards, a real tiny open_clip model, two real worker processes."""

import hashlib
import json
from pathlib import Path

import pytest

from builders.quality.__main__ import main
from builders.quality.keep_rules import PENDING
from builders.quality.run import MEMBER, SIDECAR, run
from tests.builders.quality.conftest import good_sample, make_shards, tiny_config
from wds_tools.reader import iter_tar_samples
from wds_tools.sidecar import read_sidecar
from wds_tools.urls import sidecar_url

SYNTHETIC = {f"s_{i}" for i in range(20, 26)}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def records(shard_dir: Path) -> dict[str, dict]:
    out = {}
    for shard in sorted(shard_dir.glob("q-*[0-9].tar")):
        out.update({k: v[MEMBER] for k, v in read_sidecar(str(shard), SIDECAR).items()})
    return out


def score(shard_dir: Path, tmp_path: Path):
    shards = sorted(shard_dir.glob("q-*[0-9].tar"))
    before = {p.name: sha(p) for p in shards}
    cfg = tiny_config(tmp_path, f"input={shard_dir}", "loader.num_workers=2",
                      "selection.min_clip_score_synthetic=0.0")
    report = run(cfg)
    return cfg, report, shards, before


@pytest.fixture(scope="module")
def scored_once(tmp_path_factory):
    """One scoring run shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp("scored")
    shard_dir = make_shards(tmp / "shards")
    return (shard_dir, tmp, *score(shard_dir, tmp))


@pytest.fixture
def scored(shard_dir, tmp_path):
    return score(shard_dir, tmp_path)


def test_sidecars_contract_and_untouched_shards(scored_once):
    _, _, cfg, report, shards, before = scored_once
    for shard in shards:
        assert sha(shard) == before[shard.name]
        side = read_sidecar(str(shard), SIDECAR)
        assert list(side) == [s["__key__"] for s in iter_tar_samples(str(shard))]
        for rec in (v[MEMBER] for v in side.values()):
            assert set(rec) >= {"scores", "composite", "keep", "reasons"}
            assert set(rec["scores"]) >= {"clip", "sanity", "sanity_count", "sanity_spatial", "brightness",
                                          "contrast", "blur", "border_fraction", "quality"}
            assert rec["keep"] == (rec["reasons"] == []) and PENDING not in rec["reasons"]


def test_bad_input_fails_with_reasons(scored_once):
    shard_dir = scored_once[0]
    recs = records(shard_dir)
    assert recs["nocap_100"]["reasons"] == ["missing_caption"]
    assert recs["broken_100"]["reasons"] == ["undecodable_image"]
    assert recs["noimg_100"]["reasons"] == ["missing_image"]
    assert all(recs[k]["composite"] is None for k in ("nocap_100", "broken_100", "noimg_100"))


def test_global_threshold_and_report(scored_once):
    shard_dir, tmp_path, cfg, report, _, _ = scored_once
    recs = records(shard_dir)
    eligible = sorted((r["composite"] for r in recs.values() if r["composite"] is not None), reverse=True)
    assert len(eligible) == 16
    assert report["threshold"] == eligible[12 - 1]  # ceil(0.7 * 16) = 12, over all shards together
    for r in recs.values():
        if r["composite"] is not None and r["composite"] < report["threshold"]:
            assert "below_global_threshold" in r["reasons"]
    # one threshold for all shards: a shard may keep everything or nothing
    kept_real = report["by_source"]["real"]["kept"]
    kept_synthetic = report["by_source"]["synthetic"]["kept"]
    assert report["kept"] == sum(r["keep"] for r in recs.values()) == kept_real + kept_synthetic
    assert report["by_reason"]["missing_caption"] == 1 and report["total"] == len(recs) == 19
    assert report["distributions"]["quality"]["real"]["count"] == 11
    assert report["distributions"]["sanity"]["synthetic"]["count"] == 6
    out = tmp_path / "report"
    saved = json.loads((out / "quality_report.json").read_text())
    assert saved["threshold"] == report["threshold"]
    for name in ("quality_histograms.png", "quality_grid.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "quality_report.html").read_text()
    assert "quality_grid.png" in page and "quality_histograms.png" in page


def test_synthetic_floor(shard_dir, tmp_path, scored):
    recs = records(shard_dir)
    synth_clips = sorted(r["scores"]["clip"] for k, r in recs.items() if k in SYNTHETIC)
    floor = synth_clips[2] + 1e-6  # three synthetic samples fall below
    cfg = tiny_config(tmp_path, f"input={shard_dir}", f"selection.min_clip_score_synthetic={floor}")
    report = run(cfg)
    assert report["shards"]["scored_this_run"] == 0  # selection only: scores are reused
    recs = records(shard_dir)
    below = [k for k, r in recs.items() if "below_synthetic_clip_floor" in r["reasons"]]
    assert len(below) == 3 and all(not recs[k]["keep"] for k in below)
    assert report["by_reason"]["below_synthetic_clip_floor"] == 3


def test_rerun_is_idempotent_and_resume_rescores_only_missing(scored, shard_dir, tmp_path):
    cfg, _, shards, _ = scored
    sides = {s: Path(sidecar_url(str(s), SIDECAR)) for s in shards}
    first = {s: sha(p) for s, p in sides.items()}
    again = run(cfg)
    assert again["shards"]["scored_this_run"] == 0 and again["shards"]["sidecars_rewritten"] == 0
    assert {s: sha(p) for s, p in sides.items()} == first
    # a run killed during shard 2 leaves no sidecar for it; the next run scores just that shard
    before = records(shard_dir)
    sides[shards[2]].unlink()
    resumed = run(cfg)
    assert resumed["shards"]["scored_this_run"] == 1
    after = records(shard_dir)
    assert after.keys() == before.keys()
    for k in before:
        assert after[k]["keep"] == before[k]["keep"] and after[k]["reasons"] == before[k]["reasons"], k
        assert after[k]["scores"] == pytest.approx(before[k]["scores"], abs=1e-5)


def test_cli_flags_and_config_errors(shard_dir, tmp_path, capsys):
    argv = ["--config", str(Path(__file__).resolve().parents[3] / "configs/filter/tiny.yaml"),
            "--input", str(shard_dir / "q-000000.tar"), "--output", str(tmp_path / "cli"),
            f"model.name={Path(__file__).resolve().parents[3] / 'configs/models/tiny-clip.json'}",
            "loader.num_workers=0"]
    assert main(argv) == 0
    assert "6 samples" in capsys.readouterr().out
    assert (tmp_path / "cli" / "quality_report.json").exists()
    for bad in ("selection.keep_top=0.5", "selection.keep_top_percent=1.5"):
        with pytest.raises(SystemExit) as e:
            main(argv + [bad])
        assert e.value.code == 2 and bad.split("=")[0].split(".")[1] in capsys.readouterr().err
    assert main(argv[:2] + ["model.name=x"]) == 2
    assert "input is empty" in capsys.readouterr().err


def test_materialize_keeps_exactly_the_selected_samples(scored_once):
    from wds_tools.materialize import MaterializeConfig, materialize
    shard_dir, tmp_path, _, report, _, _ = scored_once
    kept = {k for k, r in records(shard_dir).items() if r["keep"]}
    out = tmp_path / "materialized"
    materialize(MaterializeConfig(input=[str(shard_dir)], output=str(out)))
    got = {s["__key__"] for shard in sorted(out.glob("*.tar")) for s in iter_tar_samples(str(shard))}
    assert got == kept and len(got) == report["kept"]


def test_image_quality_on_the_scoring_device_gives_the_same_scores(scored_once, tmp_path):
    shard_dir = scored_once[0]
    worker = records(shard_dir)
    copy = tmp_path / "copy"
    copy.mkdir()
    for shard in sorted(shard_dir.glob("q-*[0-9].tar")):
        (copy / shard.name).write_bytes(shard.read_bytes())
    run(tiny_config(tmp_path, f"input={copy}", "loader.num_workers=1", "image_quality.where=device",
                    "selection.min_clip_score_synthetic=0.0"))
    device = records(copy)
    assert device.keys() == worker.keys()
    for k in worker:
        assert device[k]["scores"] == pytest.approx(worker[k]["scores"], abs=1e-5), k
        assert device[k]["keep"] == worker[k]["keep"]


def test_cut_image_shard_is_a_failed_shard_retried_on_rerun(tmp_path):
    from tests.builders.quality.conftest import good_sample
    from wds_tools.writer import shard_name, write_shard
    shards = tmp_path / "t"
    shards.mkdir()
    write_shard(shards / shard_name("t", 0), [good_sample(i) for i in range(4)])
    write_shard(shards / shard_name("t", 1), [good_sample(10 + i) for i in range(4)])
    bad = shards / shard_name("t", 1)
    whole = bad.read_bytes()
    bad.write_bytes(whole[: len(whole) // 2])
    report = run(tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0"))
    # no short sidecar: the cut shard is reported failed and left out of the selection
    assert report["total"] == 4 and str(bad) in report["shards"]["failed"]
    assert "cut or corrupt" in report["shards"]["failed"][str(bad)]
    assert not Path(sidecar_url(str(bad), SIDECAR)).exists()
    selection = json.loads((shards / "selection.json").read_text())
    assert [e["shard"] for e in selection["sidecars"]] == ["t-000000.tar"]
    assert selection["not_selected"] == [str(bad)]
    bad.write_bytes(whole)  # the shard is repaired (re-copied): the rerun scores it
    report = run(tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0"))
    assert report["total"] == 8 and not report["shards"]["failed"] and report["shards"]["scored_this_run"] == 1


def test_zero_weight_terms_are_not_computed(shard_dir, tmp_path):
    cfg = tiny_config(tmp_path, f"input={shard_dir}", "loader.num_workers=0",
                      "composite.sanity_weight=0", "composite.image_quality_weight=0")
    run(cfg)
    recs = records(shard_dir)
    scored = [r for r in recs.values() if r["scores"].get("clip") is not None]
    assert len(scored) == 6 + 4 + 6  # every sample with a decodable image and a caption
    for r in recs.values():
        assert r["scores"]["quality"] is None and r["scores"]["blur"] is None
        assert r["scores"]["sanity"] is None  # even the synthetic ones with count claims
    # the composite is the normalised CLIP term alone
    from builders.quality.composite import normalise_clip

    for r in scored:
        assert r["composite"] == pytest.approx(normalise_clip(r["scores"]["clip"], cfg.composite))


def test_scores_made_in_the_workers_equal_scores_made_in_main(tmp_path):
    """CPU default: each decode worker runs CLIP itself; the main-process path gives the same."""
    got = {}
    for where in ("workers", "main"):
        shard_dir = make_shards(tmp_path / where)
        run(tiny_config(tmp_path / where, f"input={shard_dir}", "loader.num_workers=2", f"loader.score_in={where}"))
        got[where] = {k: r["scores"]["clip"] for k, r in records(shard_dir).items()}
    assert got["workers"].keys() == got["main"].keys()
    assert sum(v is not None for v in got["workers"].values()) == 16
    for k, v in got["main"].items():
        assert (v is None) == (got["workers"][k] is None)
        if v is not None:
            assert got["workers"][k] == pytest.approx(v, abs=1e-5)


def test_score_in_is_validated(tmp_path):
    with pytest.raises(ValueError, match="'gpu'"):
        tiny_config(tmp_path, "loader.score_in=gpu").validate()


def test_where_clip_runs(tmp_path):
    import torch

    from builders.quality.run import score_in_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert score_in_workers(tiny_config(tmp_path, "loader.num_workers=2"), cpu)
    assert not score_in_workers(tiny_config(tmp_path, "loader.num_workers=2"), gpu)
    assert not score_in_workers(tiny_config(tmp_path, "loader.num_workers=0"), cpu)  # no workers to use
    assert score_in_workers(tiny_config(tmp_path, "loader.num_workers=1", "loader.score_in=workers"), cpu)
    with pytest.raises(ValueError, match="needs a CPU device, got 'cuda'"):
        score_in_workers(tiny_config(tmp_path, "loader.num_workers=1", "loader.score_in=workers"), gpu)


def test_a_striped_shard_counts_its_read_skips_once(tmp_path):
    """One shard, two workers: both read the whole tar, but its skipped members count once."""
    import pickle as pk

    from wds_tools.writer import write_tar_members

    d = tmp_path / "one"
    d.mkdir()
    members = []
    for i in range(6):
        s = good_sample(i)
        members += [(f"{s['__key__']}.{ext}", s[ext]) for ext in ("jpg", "json", "txt")]
    members.append((f"{good_sample(0)['__key__']}.pyd", pk.dumps({"x": 1})))
    write_tar_members(d / "q-000000.tar", members)
    report = run(tiny_config(tmp_path, f"input={d}", "loader.num_workers=2"))
    assert report["read_skips"] == {"unsafe_member_pyd": 1}
    assert report["shards"]["scored_this_run"] == 1 and report["total"] == 6


def test_report_counts_by_class_and_caption_source(scored_once):
    shard_dir, tmp_path, cfg, report, shards, _ = scored_once
    recs = records(shard_dir)
    assert set(report["by_class"]) == {"field"}  # every fixture sample is a "field"
    row = report["by_class"]["field"]
    assert row["total"] == len(recs) and row["kept"] == sum(r["keep"] for r in recs.values())
    assert row["kept_share"] == pytest.approx(row["kept"] / row["total"])
    # per-caption scores: one per caption, the primary caption's equal to scores.clip
    for r in recs.values():
        if r["scores"]["clip"] is not None:
            assert [c["clip"] for c in r["captions"]] == [r["scores"]["clip"]]
    assert set(report["by_caption_source"]) == {"original"}  # make_sample records the caption as original
    assert report["by_caption_source"]["original"]["total"] == len(recs)
    page = (tmp_path / "report" / "quality_report.html").read_text()
    assert "<h2>By class</h2>" in page and "<td>field</td>" in page and "quality_classes.png" in page
    assert (tmp_path / "report" / "quality_classes.png").stat().st_size > 1000
    # selection.json beside the report and beside the shards, listing every sidecar with its hash
    for folder in (tmp_path / "report", shard_dir):
        sel = json.loads((folder / "selection.json").read_text())
        assert sel["threshold"] == report["threshold"] and sel["kept"] == report["kept"]
        assert sel["kept_by_class"] == {"field": report["kept"]}
        assert len(sel["sidecars"]) == 3
        for e in sel["sidecars"]:
            assert sha(folder / e["sidecar"]) == e["sha256"]


def test_class_losing_more_than_half_is_a_warning(tmp_path, caplog):
    from wds_tools.writer import shard_name, write_shard
    shards = tmp_path / "w"
    shards.mkdir()
    # "dark" tiles are nearly black: low brightness and contrast, so the global cut takes them
    samples = [good_sample(i) for i in range(6)] + [good_sample(10 + i, border=0.95) for i in range(4)]
    for s in samples[6:]:
        meta = json.loads(s["json"])
        s["json"] = json.dumps({**meta, "class": "dark"}).encode()
    write_shard(shards / shard_name("w", 0), samples)
    opts = ("loader.num_workers=0", "selection.keep_top_percent=0.6", "selection.min_clip_score_caption=-1")
    report = run(tiny_config(tmp_path, f"input={shards}", *opts))
    assert report["by_class"]["dark"]["kept"] < 2
    assert any("'dark'" in w for w in report["warnings"]) and not any("'field'" in w for w in report["warnings"])
    assert any("class 'dark' keeps" in r.message for r in caplog.records)
    assert "Warnings" in (tmp_path / "report" / "quality_report.html").read_text()
    report = run(tiny_config(tmp_path, f"input={shards}", *opts, "selection.per_class=true"))
    assert report["by_class"]["dark"]["kept"] == 3 and report["by_class"]["field"]["kept"] == 4  # ceil(0.6 n)
    assert not report["warnings"] and report["selection_mode"] == "per_class"


@pytest.mark.parametrize("damage", ["cut", "keys"])
def test_damaged_sidecar_is_rescored_never_shortened(tmp_path, damage):
    from wds_tools.sidecar import write_sidecar
    from wds_tools.writer import shard_name, write_shard
    shards = tmp_path / "d"
    shards.mkdir()
    for s in range(2):
        write_shard(shards / shard_name("d", s), [good_sample(s * 10 + i) for i in range(4)])
    run(tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0"))
    target = shards / shard_name("d", 1)
    side = Path(sidecar_url(str(target), SIDECAR))
    whole = read_sidecar(str(target), SIDECAR)
    if damage == "cut":  # through the second record (a tar is zero-padded to 10 KiB at its end)
        side.write_bytes(side.read_bytes()[:1536])
    else:  # a sidecar of another version of the shard: one key fewer
        write_sidecar(target, SIDECAR, list(whole.items())[:3], check_against_shard=False)
    report = run(tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0"))
    assert report["shards"]["scored_this_run"] == 1 and not report["shards"]["failed"]
    assert report["total"] == 8
    again = read_sidecar(str(target), SIDECAR)
    assert list(again) == list(whole) and again == whole  # same scores, every key, final verdicts

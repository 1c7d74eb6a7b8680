"""The README.md model card of an open_clip hub export: what was trained, on what, and how well.

Everything comes from files a Stage 2 run leaves behind (``training_log.json``: the config, the
realised mix, the held-out figures; the quality filter's ``selection.json`` beside the shards:
threshold and kept counts), so the card describes the run that made the weights, not the config
the export was called with.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from wds_tools.quality_record import find_selection, read_selection
from wds_tools.urls import expand_urls

log = logging.getLogger(__name__)


def _fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def selection_facts(data: dict) -> list[dict]:
    """The quality selections behind the mix's sources (one entry per selection.json): threshold,
    settings, kept counts overall, by source and by class, and the kept samples of each source."""
    facts: dict[str, dict] = {}
    for source in ("real", "synthetic"):
        given = data.get(source) or []
        if not given:
            continue
        try:
            urls = expand_urls(list(given), allow_pipe=bool(data.get("allow_pipe")))
            files = list(data.get("selection") or []) or find_selection(urls)
            selection = read_selection(files) if files else None
        except (OSError, ValueError) as e:  # moved or remote shards: the card says so instead
            log.warning("model card: no quality selection for the %s source (%s)", source, e)
            continue
        if selection is None:
            continue
        key = ", ".join(selection.files)
        entry = facts.setdefault(key, {"files": selection.files, "doc": selection.docs[0], "sources": {}})
        entry["sources"][source] = {"shards": len(urls), "kept": selection.kept(urls),
                                    "kept_by_class": selection.kept_by_class(urls)}
    return list(facts.values())


def _eval_rows(evaluation: dict) -> list[str]:
    keys = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mean_recall")
    rows = ["| held-out | images | captions | " + " | ".join(keys) + " | zero-shot top-1 (%) |",
            "|---" * (len(keys) + 4) + "|"]
    for when in ("before", "after"):
        r = evaluation.get(when)
        if not r:
            continue
        ret = r.get("retrieval", {})
        rows.append(f"| {when} Stage 2 | {r.get('num_images')} | {r.get('num_captions')} | "
                    + " | ".join(_fmt(ret.get(k)) for k in keys)
                    + f" | {_fmt((r.get('zeroshot') or {}).get('accuracy'))} |")
    return rows if len(rows) > 2 else ["No held-out evaluation was recorded (eval.shards was empty)."]


def _filter_lines(selections: list[dict]) -> list[str]:
    if not selections:
        return ["No quality selection was found for these shards: trained unfiltered "
                "(data.use_quality=false) or the selection.json files have moved."]
    lines = []
    for s in selections:
        doc = s["doc"]
        lines += [f"Selection `{', '.join(s['files'])}`: threshold {_fmt(doc.get('threshold'), 4)} "
                  f"(keep_top_percent {doc.get('keep_top_percent')}, per_class {doc.get('per_class')}, "
                  f"min_class_share {doc.get('min_class_share')}); kept {doc.get('kept')} of {doc.get('total')} "
                  f"scored samples; kept by source: "
                  + (", ".join(f"{k} {v}" for k, v in sorted((doc.get("kept_by_source") or {}).items())) or "n/a")
                  + ".", ""]
        for source, v in sorted(s["sources"].items()):
            by_class = ", ".join(f"{k} {n}" for k, n in sorted(v["kept_by_class"].items()))
            lines += [f"- {source} source of this run: {v['kept']} kept samples in {v['shards']} shards"
                      f" ({by_class or 'no classes recorded'})"]
        total, kept = doc.get("total_by_class") or {}, doc.get("kept_by_class") or {}
        if total:
            lines += ["", "| class (whole selection) | scored | kept | kept share |", "|---|---|---|---|"]
            lines += [f"| {c} | {total[c]} | {kept.get(c, 0)} | {kept.get(c, 0) / max(total[c], 1):.0%} |"
                      for c in sorted(total)]
        lines.append("")
    return lines


def render_card(*, run_log: dict, config: dict, selections: list[dict], export_command: str | None,
                files: dict[str, str]) -> str:
    """The card's Markdown, with the Hugging Face front matter open_clip's own cards carry."""
    model, lora, data = config.get("model", {}), config.get("lora", {}), config.get("data", {})
    summary = run_log.get("summary") or {}
    counters = summary.get("counters") or {}
    pretrained = model.get("pretrained") or "none (seeded random initialisation)"
    info = summary.get("model") or {}
    command = summary.get("command")
    world = summary.get("world_size") or 1
    lines = ["---", "library_name: open_clip", "pipeline_tag: zero-shot-image-classification",
             "tags:", "- clip", "- remote-sensing", "- lora", "---", "",
             f"# {model.get('name')} fine-tuned with LoRA (Stage 2)", "",
             "Not uploaded anywhere by the export; set a licence matching the base weights and the data "
             "before you publish it.", "",
             "## Use", "", "```python", "import open_clip",
             "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:PATH_TO_THIS_FOLDER')",
             "tokenizer = open_clip.get_tokenizer('local-dir:PATH_TO_THIS_FOLDER')", "```", "",
             f"`{files['adapter']}/` holds the LoRA adapter in peft's format and `{files['heads']}` the "
             "projection heads trained in full beside it; the adapter applies to the base model with its "
             "attention swapped to q/k/v/out Linears (`clip_models.attention.swap_attention`).", "",
             "## Base weights", "", f"- open_clip model: `{model.get('name')}`", f"- weights: `{pretrained}`", "",
             "## LoRA", "",
             f"- rank {lora.get('rank')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
             f"rsLoRA {lora.get('rslora')}",
             f"- targets: {', '.join(lora.get('targets') or [])} ({info.get('lora_modules', 'n/a')} Linears)",
             f"- trained in full beside LoRA: heads {lora.get('train_heads')}, LayerNorms "
             f"{lora.get('train_layernorms')}, token embedding {lora.get('train_token_embedding')}",
             f"- trainable parameters: {info.get('trainable', 'n/a')} of {info.get('total', 'n/a')}", "",
             "## Data", "",
             f"- real: {', '.join(map(str, data.get('real') or [])) or 'none'}",
             f"- synthetic: {', '.join(map(str, data.get('synthetic') or [])) or 'none'}",
             f"- requested synthetic share {data.get('synthetic_ratio')}, realised "
             f"{_fmt(summary.get('realised_synthetic_share'), 3)} over "
             f"{sum(v for k, v in counters.items() if k.startswith('samples_'))} samples drawn "
             f"({', '.join(f'{k[8:]} {v}' for k, v in sorted(counters.items()) if k.startswith('samples_'))})",
             f"- samples dropped by the quality sidecars while streaming: {counters.get('quality_dropped', 0)}",
             f"- kept samples by class in the mix ({summary.get('class_counts_from', 'n/a')}): "
             + (", ".join(f"{k} {v}" for k, v in sorted((summary.get("class_counts") or {}).items())) or "n/a"),
             f"- steps: {summary.get('steps', 'n/a')} on {summary.get('world_size', 'n/a')} process(es)", "",
             "### Quality filter", "", *_filter_lines(selections),
             "## Held-out evaluation", "", *_eval_rows(run_log.get("evaluation") or {}), "",
             "Retrieval counts every caption of an image as a query and a target (RemoteCLIP's protocol); "
             "zero-shot classifies each labelled image among the held-out class names.", "",
             "## Commands", "", "```bash",
             (f"# {world} process(es){' under accelerate launch --num_processes ' + str(world) if world > 1 else ''}"
              f"\n{command}" if command
              else "# training was started from Python (training.trainer.train); training_config.yaml "
                   "holds its whole configuration"),
             export_command or "# export command not recorded", "```", ""]
    return "\n".join(lines)


def load_run_log(run_dir: Path) -> dict:
    """``training_log.json`` of a run folder ({} when absent: the card then says n/a)."""
    path = run_dir / "training_log.json"
    if not path.is_file():
        log.warning("model card: %s not found; figures will read n/a", path)
        return {}
    return json.loads(path.read_text())

"""Stage 2's quality gate: train on exactly what the quality filter selected (its
``selection.json``), or say why not.

Before any step the trainer checks each shard of the mix against the filter's ``selection.json``
(format and sidecar contract in ``wds_tools.quality_record``):

- where: ``data.selection`` (paths or URLs of ``selection.json`` files) when given, else the
  ``selection.json`` beside the shards (the filter writes one into every shard folder as well as
  into its report folder, so the default works whatever ``--output`` the filter had);
- every shard must have a quality sidecar that the selection lists with the same sha256: a missing
  sidecar (never scored), one not listed (pending, or scored by a run that did not finish) or one
  changed since the selection is an error unless ``data.require_selection=false`` (then a warning);
- every listed image shard must still be the bytes its sidecar scored: its size and sha256 as
  recorded in the selection's ``shard_identity`` (a shard not written since its sidecar was, and
  of the recorded size, is not read; any other is hashed: see ``wds_tools.shard_identity``). A
  shard rebuilt or swapped since the filter ran is always an error (:class:`ShardChangedError`,
  one line), whatever ``data.require_selection`` says: its verdicts describe other images;
- rare-class weights and the epoch size come from the kept counts of the listed shards.

``data.use_quality=false`` skips all of this and trains on every sample, on purpose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from wds_tools.quality_record import Selection, find_selection, read_selection

log = logging.getLogger(__name__)


class SelectionError(ValueError):
    """The mix's shards are not (all) covered by a finished quality selection."""


@dataclass(kw_only=True)
class MixSelection:
    """What the selection says about the shards of the mix."""

    selection: Selection | None
    kept_by_class: dict[str, int]
    kept: int
    problems: list[str]


class ShardChangedError(SelectionError):
    """A selected shard is not the bytes the quality filter scored (rebuilt, swapped or missing)."""


def check_shards_unchanged(selection: Selection, urls: list[str]) -> None:
    """:class:`ShardChangedError` naming the first shard whose bytes differ from the selection's record."""
    changed = selection.shard_problems(urls)
    if changed:
        raise ShardChangedError(
            f"{len(changed)} of {len(urls)} shards are not the images the quality filter scored "
            f"({', '.join(selection.files)}); first: {changed[0]}. Rerun the quality filter over them "
            f"(python -m builders.quality --input DIR scores them again), then train")


def _advice(problems: list[str], urls: list[str], where: str) -> str:
    shown = "\n  ".join(problems[:5])
    more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
    return (f"{len(problems)} of {len(urls)} shards are not covered by a finished quality selection "
            f"({where}):\n  {shown}{more}\nRun the quality filter over these shards and let it finish "
            f"(python -m builders.quality --input DIR; a killed run resumes), or point data.selection at "
            f"its selection.json, or set data.use_quality=false to train unfiltered on purpose "
            f"(data.require_selection=false trains anyway with what the sidecars say)")


def check_mix_selection(urls: list[str], *, files: list[str], require: bool,
                        check_hashes: bool = True) -> MixSelection:
    """Check ``urls`` (every shard of the mix) against the selection; see the module docstring."""
    found = list(files) or find_selection(urls)
    selection = read_selection(found) if found else None
    where = (", ".join(found) if found else "no selection.json beside the shards and none given in data.selection")
    problems = (selection or Selection(files=[], entries={}, docs=[])).problems(urls, check_hashes=check_hashes)
    if selection is not None:
        check_shards_unchanged(selection, urls)
    if problems and require:
        raise SelectionError(_advice(problems, urls, where))
    if problems:
        log.warning("data.require_selection=false: %s", _advice(problems, urls, where))
    kept_by_class = selection.kept_by_class(urls) if selection else {}
    kept = selection.kept(urls) if selection else 0
    if selection:
        log.info("quality selection %s: %d kept samples in the mix's %d shards", ", ".join(selection.files),
                 kept, len(urls))
    return MixSelection(selection=selection, kept_by_class=kept_by_class, kept=kept, problems=problems)


def check_sources_keep_samples(selection: Selection, sources: list) -> None:
    """ValueError when the selection keeps no sample of a source the mix draws from: its stream
    would search forever for a sample to yield (the real and synthetic sets are often filtered in
    separate runs, with separate cuts)."""
    for s in sources:
        urls = list(s.urls)
        covered = not selection.problems(urls, check_hashes=False)
        if s.weight > 0 and covered and selection.kept(urls) == 0:
            raise ValueError(
                f"the quality selection keeps no sample of the {s.name} source ({len(urls)} shards, "
                f"{', '.join(selection.files)}): lower its cut (selection.keep_top_percent, "
                f"selection.min_clip_score_{s.name}), leave the source out, or set data.use_quality=false")


def without_empty_shards(selection: Selection, sources: list) -> list:
    """``sources`` less the shards the selection keeps no sample of.

    Each rank and loader worker streams its own slice of a source's shards, so a slice of only
    such shards would search forever; a sparse selection (noisy synthetic shards) makes that
    likely with several ranks. Dropped shards are logged, never silently lost: they hold nothing
    the selection would let through.
    """
    out = []
    for s in sources:
        urls = [u for u in s.urls if not selection.keeps_none(u)]
        if len(urls) < len(s.urls):
            log.info("%s source: %d of %d shards keep no sample in the quality selection; streaming the "
                     "other %d", s.name, len(s.urls) - len(urls), len(s.urls), len(urls))
        out.append(replace(s, urls=urls) if len(urls) < len(s.urls) else s)
    return out


def select_mix(data_cfg, sources: list, manifests: dict) -> tuple[list, dict]:
    """The sources to stream and their sample counts (rare-class weights, epoch size).

    With ``data_cfg.use_quality``: the mix is checked against the selection (see the module
    docstring), shards it keeps nothing of are left out, and counts are the selection's kept
    counts; else (or without a selection) the sources as given and the manifests' counts.
    """
    if data_cfg.use_quality:
        sel = check_mix_selection([u for s in sources for u in s.urls], files=list(data_cfg.selection),
                                  require=data_cfg.require_selection)
        if sel.selection is not None:
            check_sources_keep_samples(sel.selection, sources)
            sources = without_empty_shards(sel.selection, sources)
        if sel.selection is not None and sel.kept:
            return sources, {"by_class": sel.kept_by_class, "total_samples": sel.kept,
                             "from": "quality selection (kept samples)"}
    return sources, {"by_class": manifests["by_class"], "total_samples": manifests["total_samples"],
                     "from": "dataset.json manifests (before any filtering)"}

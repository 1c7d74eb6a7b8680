"""Shard format and streaming library shared by Stage 1 (builders) and Stage 2 (training).

The sample contract lives in :mod:`wds_tools.sample`; atomic writing in :mod:`wds_tools.writer`;
dataset indexes in :mod:`wds_tools.manifest`; URL lists in :mod:`wds_tools.urls`; safe reading and
sidecar joins in :mod:`wds_tools.reader` and :mod:`wds_tools.sidecar`; typed configs in
:mod:`wds_tools.config`.
"""

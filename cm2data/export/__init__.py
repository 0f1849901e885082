"""Exporters: canonical records → the files a trainer reads (LLaMA-Factory today, VeRL later).

Each exporter is dependency-light (records in, rows out): it imports neither torch nor the trainer, so it runs in
the toolkit's environment, and the trainer only ever sees the files it writes.
"""

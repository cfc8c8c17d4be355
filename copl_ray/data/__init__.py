"""Preference data: canonical tables (``tables``), sources (synthetic, UF-P, own, UKP, and
the public sets TL;DR, PRISM, PersonalLLM read by name or local path through ``hub``),
shared user sampling and validation. ``build_tables`` / ``run_data_stage`` are the entry
points; ``python -m copl_ray.data build --config tiny`` is the CLI.
"""

from copl_ray.data.build import build_tables, run_data_stage
from copl_ray.data.tables import DataSummary, PreferenceTables, format_text, label_column
from copl_ray.data.validate import DataError

__all__ = [
    "DataError",
    "DataSummary",
    "PreferenceTables",
    "build_tables",
    "format_text",
    "label_column",
    "run_data_stage",
]

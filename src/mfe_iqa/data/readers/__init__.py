"""One reader per IQA database, each for the layout its authors distribute; all return a ``Database``."""

from mfe_iqa.data.readers.base import Database
from mfe_iqa.data.readers.csiq import read_csiq
from mfe_iqa.data.readers.kadid10k import read_kadid10k
from mfe_iqa.data.readers.koniq10k import read_koniq10k
from mfe_iqa.data.readers.live import read_live
from mfe_iqa.data.readers.livec import read_livec
from mfe_iqa.data.readers.pipal import read_pipal
from mfe_iqa.data.readers.spaq import read_spaq
from mfe_iqa.data.readers.table import read_csv_database, read_pyiqa_meta
from mfe_iqa.data.readers.tid2013 import read_tid2013

__all__ = [
    "Database",
    "read_csiq",
    "read_csv_database",
    "read_kadid10k",
    "read_koniq10k",
    "read_live",
    "read_livec",
    "read_pipal",
    "read_pyiqa_meta",
    "read_spaq",
    "read_tid2013",
]

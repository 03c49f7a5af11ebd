"""All of Neuronpedia as a shared, hive-partitioned Parquet dataset (the source of truth at scale).

    <ds>/{features,activations,explanations}/model=M/source=S/part-<start>-<stop>.parquet
    <ds>/_np/commits/<table>/model=M/source=S/part-<start>-<stop>.json    one marker per unit
    <ds>/_np/sources/model=M/source=S.json                               the source's feature count
    <ds>/_np/manifest.json                                                what `verify` found

    location.py   a folder or s3:// bucket through one pyarrow filesystem; files appear whole
    units.py      a unit of work -> one file + one commit marker; leases and the sweep
    check.py      status (markers vs listing) and verify (bytes, rows, overlaps; the manifest)
    mirror_io.py  a mirror's sources written as units; a dataset read in place or copied in
    sync.py       `dataset sync`: the bulk exports straight into the dataset, local or on Ray:
    exports_units.py  the map, one unit per export object (download, the importer's reader, commit)
    gaps.py       the API for what an export lacks, from the driver's one client (one budget)
    reduce.py     per source, the columns that span batches; the features/explanations units

See docs/dataset.md.
"""

from __future__ import annotations

from .check import DatasetReport, status, verify
from .location import Location, open_location
from .mirror_io import WriteReport, arrow_datasets, import_from_dataset, read_rows, write_from_mirror
from .sync import DatasetSyncSummary, dataset_sync
from .units import TABLES, Unit, markers, new_job_id, sweep, write_unit

__all__ = ["DatasetReport", "DatasetSyncSummary", "Location", "TABLES", "Unit", "WriteReport", "arrow_datasets", "dataset_sync", "import_from_dataset",
           "markers", "new_job_id", "open_location", "read_rows", "status", "sweep", "verify", "write_from_mirror",
           "write_unit"]

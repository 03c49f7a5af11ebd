"""Planning an exports-first sync of a range: which files hold it, and exports or API by cost."""

import math

import pytest

from npclient.sync.exports import BYTES_PER_REQUEST, guess_batch_size, plan_export, text_positions
from npclient.http.s3 import S3Object

PREFIX = "v1/gpt2-small/0-res-jb/"
MIB = 2**20


def listing(n_batches=24, sizes=None, explanations=24):
    """A source's listing shaped like gpt2-small res-jb (24 batches of 1,024 features)."""
    sizes = sizes or {"features": 3 * MIB, "activations": 40 * MIB, "explanations": 2 * MIB}
    objs = [S3Object(PREFIX + m, 500, "e") for m in ("model.jsonl", "release.jsonl", "source.jsonl", "sourceset.jsonl")]
    for kind, n in (("features", n_batches), ("activations", n_batches), ("explanations", explanations)):
        objs += [S3Object(f"{PREFIX}{kind}/batch-{i}.jsonl.gz", sizes[kind], f"{kind}{i}") for i in range(n)]
    return objs


def batches(plan, kind):
    return sorted(int(o.key.rsplit("-", 1)[1].split(".")[0]) for o in plan.needed.get(kind, []))


def test_text_positions_follow_the_text_order_of_index():
    pos = text_positions(120)
    assert [i for i, _ in sorted(pos.items(), key=lambda t: t[1])][:5] == [0, 1, 10, 100, 101]
    assert pos[2] == 1 + 1 + 10 + 20  # "0", "1", "10".."19", "100".."119", then "2"


def test_batch_size_is_known_or_estimated():
    objs = listing()
    feats = [o for o in objs if "/features/" in o.key]
    assert guess_batch_size(24576, feats) == 1024
    assert guess_batch_size(24000, feats) == 1024  # holes leave the count of files as it is
    eight = [S3Object(f"k{i}", 100, "e") for i in range(8)]
    assert guess_batch_size(1000, eight) == 128
    five = [S3Object(f"k{i}", 100, "e") for i in range(4)] + [S3Object("k4", 50, "e")]
    assert guess_batch_size(450, five) == 100  # neither: from the count and the last file's share
    assert guess_batch_size(50, five[:1]) == 50


def test_whole_source_takes_every_file_of_the_wanted_parts():
    plan = plan_export(listing(), start=0, stop=24576, count=24576, ranged=False,
                       parts=("features", "activations"), missing=24576)
    assert plan.use == "exports" and plan.reason == "whole source"
    assert len(plan.needed["features"]) == len(plan.needed["activations"]) == 24
    assert "explanations" not in plan.needed and not [o for o in plan.objects() if "/explanations/" in o.key]
    assert len(plan.objects()) == 4 + 48
    assert plan.note().startswith("exports: 24 of 24 feature files, 24 of 24 activation files (whole source, ")


def test_a_range_needs_the_batches_that_hold_it():
    plan = plan_export(listing(), start=0, stop=50, count=24576, ranged=True,
                       parts=("features", "activations", "explanations"), missing=50)
    pos = text_positions(24576)
    assert batches(plan, "features") == sorted({pos[i] // 1024 for i in range(50)})
    assert batches(plan, "activations") == [0]
    assert batches(plan, "explanations") == list(range(24))  # rows: only all of them are sure
    assert plan.requests == 2 and plan.bytes == (len(batches(plan, "features")) * 3 + 40 + 24 * 2) * MIB
    assert plan.use == "api"  # 2 requests (8 MiB) against ~100 MB of files
    assert plan.objects() == []
    assert plan.note().startswith(f"API: 2 requests instead of {len(batches(plan, 'features'))} of 24 feature files, "
                                  "1 of 24 activation files, 24 of 24 explanation files (")
    mid = plan_export(listing(), start=5000, stop=7000, count=24576, ranged=True, parts=("features", "activations"),
                      missing=2000)
    assert batches(mid, "activations") == [4, 5, 6]
    assert batches(mid, "features") == sorted({pos[i] // 1024 for i in range(5000, 7000)})


def test_exports_win_when_their_bytes_cost_less_than_the_requests():
    small = {"features": 1000, "activations": 5000, "explanations": 800}
    plan = plan_export(listing(sizes=small), start=0, stop=2000, count=24576, ranged=True,
                       parts=("features", "activations", "explanations"), missing=2000)
    assert plan.requests == 80 and plan.bytes < 80 * BYTES_PER_REQUEST and plan.use == "exports"
    assert plan.note().endswith("instead of 80 requests)")
    # files already on disk cost nothing
    have = {o.key for o in listing(sizes=small)}
    assert plan_export(listing(sizes=small), start=0, stop=50, count=24576, ranged=True, parts=("features",),
                       missing=50, have=have).bytes == 0
    # the exchange rate decides at the margin
    edge = plan_export(listing(sizes=small), start=0, stop=25, count=24576, ranged=True, parts=("features",),
                       missing=25, bytes_per_request=1000)
    assert edge.requests == 1 and edge.bytes > 1000 and edge.use == "api"
    # --full: one GET a feature
    get = plan_export(listing(sizes=small), start=0, stop=25, count=24576, ranged=True, parts=("features",),
                      missing=25, method="get", bytes_per_request=1000)
    assert get.requests == 25 and get.use == "exports"


def test_forced_nothing_missing_and_unknown_count():
    forced = plan_export(listing(), start=0, stop=10, count=24576, ranged=True, parts=("features",), missing=10,
                         force="exports")
    assert forced.use == "exports" and "forced by --exports-only" in forced.note()
    done = plan_export(listing(), start=0, stop=24576, count=24576, ranged=False, parts=("features",), missing=0)
    assert done.use == "api" and done.objects() == [] and done.note().startswith("exports: none needed")
    retry = plan_export(listing(), start=0, stop=24576, count=24576, ranged=False, parts=("features",), missing=0,
                        pending=True)
    assert retry.use == "exports"
    unknown = plan_export(listing(), start=0, stop=50, count=None, ranged=True, parts=("features", "activations"),
                          missing=50, force="exports")
    assert len(unknown.needed["features"]) == len(unknown.needed["activations"]) == 24


@pytest.mark.parametrize("start,stop", [(0, 1), (1023, 1025), (24000, 24576), (100, 101)])
def test_activation_batches_are_numeric_ranges(start, stop):
    plan = plan_export(listing(), start=start, stop=stop, count=24576, ranged=True, parts=("activations",),
                       missing=stop - start, force="exports")
    assert batches(plan, "activations") == list(range(start // 1024, math.ceil(stop / 1024)))

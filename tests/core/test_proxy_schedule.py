"""Server-scheduled proxy subsets (core/proxy_schedule.py): each version names the samples its updates
label; admission refuses ids outside that subset or the proxy set; the knowledge carries the ids."""

from __future__ import annotations

import numpy as np
import pytest

from koala_async.core.admission import AdmissionContext, admit
from koala_async.core.dedupe import SeqWindow
from koala_async.core.envelope import Knowledge, Update, decode, encode
from koala_async.core.proxy_schedule import ProxySchedule, schedule_for
from koala_async.core.staleness import StalenessPolicy
from koala_async.errors import MessageError

N, SIZE, CLASSES = 50_000, 2_000, 10


def test_each_version_names_size_distinct_sorted_ids_and_a_period_covers_the_proxy_set() -> None:
    schedule = ProxySchedule(N, SIZE, seed=3)
    assert schedule.period == 25
    seen = np.zeros(N, dtype=int)
    for version in range(schedule.period):
        ids = schedule.ids(version)
        assert ids.dtype == np.uint32 and len(ids) == SIZE == len(np.unique(ids))
        assert (np.diff(ids.astype(np.int64)) > 0).all() and ids.max() < N
        seen[ids] += 1
    assert (seen == 1).all()  # every sample once per period, none twice
    assert np.array_equal(schedule.ids(25), schedule.ids(0))


def test_the_schedule_is_a_function_of_its_inputs_so_a_restarted_server_recomputes_it() -> None:
    assert np.array_equal(ProxySchedule(N, SIZE, 3).ids(7), ProxySchedule(N, SIZE, 3).ids(7))
    assert not np.array_equal(ProxySchedule(N, SIZE, 3).ids(7), ProxySchedule(N, SIZE, 4).ids(7))


def test_a_subset_that_does_not_divide_the_proxy_set_wraps_around() -> None:
    schedule = ProxySchedule(10, 4, seed=0)
    assert schedule.period == 3
    assert [len(schedule.ids(v)) for v in range(3)] == [4, 4, 4]
    assert len(set(np.concatenate([schedule.ids(v) for v in range(3)]).tolist())) == 10


def test_no_schedule_for_zero_or_a_subset_as_large_as_the_proxy_set() -> None:
    assert schedule_for(N, 0, 0) is None and schedule_for(N, N, 0) is None
    assert schedule_for(N, SIZE, 0) == ProxySchedule(N, SIZE, 0)
    with pytest.raises(ValueError):
        ProxySchedule(N, 0)


def _ctx(schedule: ProxySchedule) -> AdmissionContext:
    return AdmissionContext(version=4, proxy_id="p", n_proxy=N, num_classes=CLASSES,
                            policy=StalenessPolicy(max_staleness=5), schedule=schedule)


def _update(ids: np.ndarray | None, base: int = 3, rows: int | None = None) -> Update:
    n = rows if rows is not None else len(ids)  # type: ignore[arg-type]
    return Update(sender="c1", seq=1, base_version=base, tier="t", n_samples=9, proxy_id="p",
                  logits=np.zeros((n, CLASSES), np.float16),
                  sample_ids=None if ids is None else ids.astype(np.uint32))


def test_admission_takes_scheduled_ids_and_refuses_others() -> None:
    schedule = ProxySchedule(N, SIZE, seed=1)
    ctx = _ctx(schedule)
    ids = schedule.ids(3)
    assert admit(_update(ids), "c1", ctx, SeqWindow()).accepted
    assert admit(_update(ids[::3]), "c1", ctx, SeqWindow()).accepted  # a share of the subset is fine
    other = np.setdiff1d(schedule.ids(4), ids)[:5]
    assert admit(_update(np.sort(np.concatenate([ids[:5], other]))), "c1", ctx, SeqWindow()).reason == \
        "unscheduled_ids"
    assert admit(_update(schedule.ids(4)), "c1", ctx, SeqWindow()).reason == "unscheduled_ids"  # built on 3
    assert admit(_update(None, rows=N), "c1", ctx, SeqWindow()).reason == "unscheduled_ids"
    assert admit(_update(np.array([N + 1])), "c1", ctx, SeqWindow()).reason == "bad_sample_ids"


def test_knowledge_carries_its_ids_and_a_bad_id_list_is_refused() -> None:
    ids = ProxySchedule(N, SIZE, 1).ids(2)
    knowledge = Knowledge(sender="s", seq=1, version=2, proxy_id="p", num_classes=CLASSES, temperature=3.0,
                          logits=np.ones((SIZE, CLASSES), np.float16), ids=ids)
    back = decode(encode(knowledge))
    assert isinstance(back, Knowledge) and np.array_equal(back.ids, ids) and back.logits.shape == (SIZE, CLASSES)
    assert len(encode(knowledge)) < 50_000  # 2,000 x 10 float16 and 2,000 ids, not 50,000 rows
    no_logits = decode(encode(Knowledge(sender="s", seq=1, version=0, proxy_id="p", num_classes=CLASSES,
                                        temperature=3.0, logits=None, ids=ids)))
    assert isinstance(no_logits, Knowledge) and no_logits.logits is None and len(no_logits.ids) == SIZE
    with pytest.raises(MessageError) as err:
        decode(encode(Knowledge(sender="s", seq=1, version=2, proxy_id="p", num_classes=CLASSES, temperature=3.0,
                                logits=np.ones((SIZE - 1, CLASSES), np.float16), ids=ids)))
    assert err.value.reason == "shape_mismatch"
    with pytest.raises(MessageError) as err:
        decode(encode(Knowledge(sender="s", seq=1, version=2, proxy_id="p", num_classes=CLASSES, temperature=3.0,
                                logits=None, ids=ids[::-1].copy())))
    assert err.value.reason == "bad_sample_ids"

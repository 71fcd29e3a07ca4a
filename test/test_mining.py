"""Tuple mining uses positions only, and never hands out a wrong positive or negative."""
import numpy as np
import pytest

from densernet_core.training.mining import TupleMiner, negative_pools, positives, within


@pytest.mark.parametrize("seed", range(5))
def test_positives_and_negatives_respect_both_radii(seed):
    rng = np.random.default_rng(seed)
    db = rng.uniform(0, 100, (300, 2))
    q = rng.uniform(0, 100, (40, 2))
    pos_r, neg_r = rng.uniform(2, 10), rng.uniform(12, 30)
    pos = positives(q, db, pos_r)
    pools = negative_pools(q, db, neg_r)
    for i in range(len(q)):
        d = np.linalg.norm(db - q[i], axis=1)
        assert np.all(d[pos[i]] <= pos_r)
        assert set(pos[i]) == set(np.flatnonzero(d <= pos_r))  # every true positive, nothing else
        assert np.all(d[pools[i]] > neg_r)
        assert set(pools[i]) == set(np.flatnonzero(d > neg_r))
        assert not set(pos[i]) & set(pools[i])


def test_query_itself_and_same_group_are_never_positives():
    pos_db = np.array([[0.0, 0], [1, 0], [0.5, 0], [50, 0]])
    groups_db = np.array(["a", "a", "b", "b"])
    q = pos_db[:2]
    out = positives(q, pos_db, 2.0, np.array(["a", "a"]), groups_db, other_group_only=False,
                    query_db_ids=np.array([0, 1]))
    assert list(out[0]) == [1, 2] and list(out[1]) == [0, 2]
    cross = positives(q, pos_db, 2.0, np.array(["a", "a"]), groups_db, other_group_only=True,
                      query_db_ids=np.array([0, 1]))
    assert list(cross[0]) == [2] and list(cross[1]) == [2]


def test_miner_picks_nearest_positive_and_hardest_negatives():
    rng = np.random.default_rng(0)
    db_desc = rng.normal(size=(30, 8)).astype(np.float32)
    db_desc /= np.linalg.norm(db_desc, axis=1, keepdims=True)
    q_desc = db_desc[0] + 0.01
    pos = [np.array([0, 1, 2])]
    pool = [np.arange(10, 30)]
    miner = TupleMiner(pos, pool, num_negatives=3, negative_samples=20, seed=0)
    p, negs = miner.mine(0, q_desc, db_desc)
    assert p == 0
    sims = db_desc[10:30] @ q_desc
    assert set(negs) == set(10 + np.argsort(-sims)[:3])
    assert set(negs) <= set(pool[0])


def test_miner_keeps_previous_hard_negatives_in_the_candidates():
    rng = np.random.default_rng(1)
    db_desc = rng.normal(size=(2000, 4)).astype(np.float32)
    q = np.ones(4, np.float32)
    miner = TupleMiner([np.array([0])], [np.arange(1, 2000)], num_negatives=5, negative_samples=50, seed=0)
    _, first = miner.mine(0, q, db_desc)
    sims_first = np.sort(db_desc[first] @ q)
    _, second = miner.mine(0, q, db_desc)  # another random sample, plus the previous hardest
    assert np.all(np.sort(db_desc[second] @ q) >= sims_first - 1e-6)


def test_queries_without_positive_or_enough_negatives_are_not_usable():
    miner = TupleMiner([np.array([1]), np.array([], dtype=np.int64), np.array([0])],
                       [np.arange(5), np.arange(5), np.arange(2)], num_negatives=3)
    assert list(miner.usable()) == [0]
    with pytest.raises(ValueError, match="no positive"):
        miner.mine(1, np.ones(2), np.ones((5, 2)))


def test_within_is_inclusive_for_frame_tolerance():
    out = within(np.array([[5.0, 0, 0]]), np.arange(10, dtype=float)[:, None] * np.array([[1.0, 0, 0]]), 2.0)
    assert list(out[0]) == [3, 4, 5, 6, 7]


def test_each_source_takes_the_traversals_in_turn_and_the_nearest_within_each():
    db_desc = np.eye(40, dtype=np.float32)
    groups = np.array(["day_right"] * 3 + ["day_left"] * 3 + ["night_right"] * 3 + ["far"] * 31)
    q_desc = db_desc[1] * 0.8 + db_desc[4] * 0.5 + db_desc[3] * 0.2 + db_desc[7] * 0.3  # 1, then 4, then 7
    pos, pool = [np.arange(9)], [np.arange(10, 40)]
    nearest = TupleMiner(pos, pool, num_negatives=3, negative_samples=20, seed=0, db_groups=groups)
    assert {nearest.mine(0, q_desc, db_desc, r)[0] for r in range(6)} == {1}  # the easiest traversal, always
    each = TupleMiner(pos, pool, num_negatives=3, negative_samples=20, seed=0, positive="each_source",
                      db_groups=groups)
    chosen = [each.mine(0, q_desc, db_desc, r)[0] for r in range(6)]
    assert sorted(chosen[:3]) == [1, 4, 7] and chosen[:3] == chosen[3:]  # each traversal's nearest, in turn
    again = TupleMiner(pos, pool, num_negatives=3, negative_samples=20, seed=0, positive="each_source",
                       db_groups=groups)  # a resumed run rotates as the first did
    assert [again.mine(0, q_desc, db_desc, r)[0] for r in (4, 5)] == chosen[4:]


def test_each_source_needs_the_traversals_and_unknown_choices_are_refused():
    with pytest.raises(ValueError, match="db_groups"):
        TupleMiner([np.array([0])], [np.arange(1, 5)], num_negatives=1, positive="each_source")
    with pytest.raises(ValueError, match="'furthest' unknown"):
        TupleMiner([np.array([0])], [np.arange(1, 5)], num_negatives=1, positive="furthest")

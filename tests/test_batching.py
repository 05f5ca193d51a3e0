import pytest

from mmctx.data.batching import TokenBudgetBatchSampler


def _lengths():
    return [5, 1000, 7, 30, 6, 900, 31, 8, 29, 5000, 4, 33]


def test_every_sample_once_and_within_budget():
    lengths = _lengths()
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=2000, shuffle=True, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert longest * len(b) <= 2000 or len(b) == 1  # an over-long sample rides alone
    assert [9] in batches  # 5000 > budget: its own batch
    assert len(sampler) == len(batches)


def test_padding_stays_small_compared_with_fixed_batches():
    lengths = [10] * 50 + [1000] * 5 + [100] * 20
    budget = TokenBudgetBatchSampler(lengths, max_tokens=2000, shuffle=True)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in budget)
    assert padded == sum(lengths)  # equal lengths group together: no padding at all


def test_shuffle_depends_on_epoch_and_seed_only():
    a = TokenBudgetBatchSampler(_lengths(), 40, seed=3)  # 9 batches
    b = TokenBudgetBatchSampler(_lengths(), 40, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)  # a new epoch, a new order...
    assert sorted(map(tuple, a)) == sorted(
        map(tuple, b)
    )  # ...of the same groups (lengths all differ)


def test_ranks_split_the_batches():
    lengths = _lengths()
    ranks = [
        list(TokenBudgetBatchSampler(lengths, 2000, seed=0, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1])
    seen = {i for r in ranks for b in r for i in b}
    assert seen == set(range(len(lengths)))


def test_bad_budget():
    with pytest.raises(ValueError, match="max_tokens must be > 0, got 0"):
        TokenBudgetBatchSampler([1], 0)

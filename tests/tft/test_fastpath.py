"""The precomputed loader gives exactly the stock pytorch-forecasting batches; splits are time cutoffs."""

from __future__ import annotations

import pytest
import torch

from zoo.tft.fastpath import WindowBatches, stock_collate


def assert_same(a, b, name="batch"):
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), name
        for k, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{name}[{k}]")
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{name}: keys differ {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{name}.{k}")
    elif a is None:
        assert b is None, name
    else:
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{name}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        )
        assert torch.equal(a, b), f"{name}: values differ (max {(a.float() - b.float()).abs().max()})"


@pytest.mark.parametrize("which", ["multi_dm", "single_dm"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_fast_batches_equal_stock_batches(request, which, split):
    dm = request.getfixturevalue(which)
    stock = dm.datasets[split]
    fast = WindowBatches(stock)
    assert len(fast) == len(stock)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(0, len(stock), (8,), generator=g).tolist()
        assert_same(stock_collate([stock[i] for i in idx]), fast.__getitems__(idx))


def test_stock_dataloader_matches_fast_loader(multi_dm):
    """Through the real DataLoaders: the stock `to_dataloader` and the zoo's loader, unshuffled."""
    stock = multi_dm.datasets["val"].to_dataloader(
        train=False, batch_size=multi_dm.eval_batch_size, shuffle=False, num_workers=0
    )
    zoo = multi_dm.val_dataloader()
    n = 0
    for a, b in zip(stock, zoo):
        assert_same(a, b)
        n += 1
    assert n == len(zoo) == len(stock)


def test_split_is_a_time_cutoff_per_series(multi_dm):
    train = multi_dm.datasets["train"].decoded_index
    val = multi_dm.datasets["val"].decoded_index
    for series, cut in multi_dm.cutoffs["train"].items():
        t = train[train["series"] == series]
        v = val[val["series"] == series]
        assert len(t) and len(v)
        assert t["time_idx_last"].max() <= cut  # nothing after the cutoff is trained on, inputs included
        assert v["time_idx_first_prediction"].min() == cut + 1
    # The training dataset's own tensors stop at the cutoff too (normalizers are fitted on them).
    ds = multi_dm.datasets["train"]
    assert int(ds.data["time"].max()) <= max(multi_dm.cutoffs["train"].values())


def test_fast_loader_refuses_what_it_cannot_reproduce(multi_dm):
    from pytorch_forecasting import TimeSeriesDataSet

    from zoo.core.errors import ZooError

    ds = TimeSeriesDataSet.from_dataset(
        multi_dm.datasets["train"], multi_dm.frame, randomize_length=(0.2, 0.05), min_encoder_length=12
    )
    with pytest.raises(
        ZooError,
        match="data.loader=fast does not support variable encoder/prediction lengths, randomize_length",
    ):
        WindowBatches(ds)


def test_train_loader_uses_resumable_sampler(multi_dm):
    from zoo.core.datamodule import ResumableSampler

    loader = multi_dm.train_dataloader()
    assert isinstance(loader.sampler, ResumableSampler)
    x, (y, w) = next(iter(loader))
    assert x["encoder_cont"].shape[0] == multi_dm.batch_size and w is None


@pytest.fixture(scope="module")
def encoder_dms(cache_dir):
    """The ETTh1 recipe's settings on small synthetic data: EncoderNormalizer targets, standardized,
    channel-independent (one target) and joint (a MultiNormalizer of two)."""
    from tests.tft.conftest import small_dm

    out = {}
    for layout in ("channels", "joint"):
        dm = small_dm(cache_dir, target_normalizer="encoder", standardize=True, name=f"enc-{layout}",
                      targets=["cpu_percent", "memory_percent"], channel_independent=layout == "channels",
                      static_categoricals=[] if layout == "channels" else ["host"])  # fmt: skip
        dm.prepare_data()
        dm.setup()
        out[layout] = dm
    return out


@pytest.mark.parametrize("layout", ["channels", "joint"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_encoder_normalizer_fast_batches_equal_stock(encoder_dms, layout, split):
    import warnings

    dm = encoder_dms[layout]
    stock = dm.datasets[split]
    fast = dm.batches(split)
    assert isinstance(fast, WindowBatches) and len(fast) == len(stock)
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stock path's per-window sklearn feature-name warnings
        for idx in (list(range(len(stock))), torch.randint(0, len(stock), (16,), generator=g).tolist()):
            want = stock_collate([stock[i] for i in idx])
            assert_same(want, fast.__getitems__(idx))
    # Per-window scales really differ (the test would pass vacuously with one shared scale).
    scale = want[0]["target_scale"]
    assert len({round(float(v), 4) for v in (scale[0] if isinstance(scale, list) else scale)[:, 1]}) > 1


def test_encoder_scale_is_bitwise_torch_per_row():
    from zoo.tft.fastpath import encoder_scale

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 97, generator=g) * 50 + 30
    center, scale = encoder_scale(x)
    want_c = torch.stack([torch.mean(r.clone(), dim=-1) for r in x])
    want_s = torch.stack([torch.std(r.clone(), dim=-1) + torch.finfo(r.dtype).eps for r in x])
    assert torch.equal(center, want_c) and torch.equal(scale, want_s)


def test_encoder_normalizer_refuses_other_options(encoder_dms):
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import EncoderNormalizer

    from zoo.core.errors import ZooError
    from zoo.tft.fastpath import StockBatches

    dm = encoder_dms["channels"]
    params = dm.datasets["train"].get_parameters()
    params["target_normalizer"] = EncoderNormalizer(method="robust", max_length=12)
    ds = TimeSeriesDataSet.from_parameters(params, dm.frame)
    with pytest.raises(
        ZooError,
        match=r"data.loader=fast does not support EncoderNormalizer\(method='robust', max_length=12\): use data.loader=stock",
    ):
        WindowBatches(ds)
    dm.fast.pop("test", None)
    dm.datasets["test"] = ds
    try:
        assert isinstance(dm.batches("test"), StockBatches)
    finally:
        del dm.datasets["test"]
        dm.fast.pop("test", None)


def assert_same_params(a, b, name="params"):
    """Fitted dataset parameters equal value by value (encoders, normalizers and scalers by their state)."""
    import numpy as np
    import pandas as pd

    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{name}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same_params(a[k], b[k], f"{name}.{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), name
        for k, (u, v) in enumerate(zip(a, b)):
            assert_same_params(u, v, f"{name}[{k}]")
    elif isinstance(a, pd.DataFrame | pd.Series):
        assert a.equals(b) and a.index.equals(b.index), name
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), name
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert type(a) is type(b), f"{name}: {type(a)} vs {type(b)}"
        assert_same_params(vars(a), vars(b), name)
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), f"{name}: {a!r} vs {b!r}"


@pytest.fixture(scope="module")
def direct_pairs(cache_dir):
    """The same data built by the stock constructor (data.loader=stock) and directly (data.loader=fast)."""
    from tests.tft.conftest import small_dm

    layouts = {
        "multi": {},
        "single": {"targets": ["cpu_percent"]},
        "channels": {"channel_independent": True, "static_categoricals": [], "targets": ["cpu_percent", "memory_percent"]},
        "standardized": {"standardize": True, "test_fraction": 0.1},
    }  # fmt: skip
    out = {}
    for layout, kw in layouts.items():
        pair = []
        for loader in ("stock", "fast"):
            dm = small_dm(cache_dir, loader=loader, name=f"direct-{layout}", **kw)
            dm.prepare_data()
            dm.setup()
            pair.append(dm)
        out[layout] = pair
    return out


@pytest.mark.parametrize("layout", ["multi", "single", "channels", "standardized"])
def test_direct_build_equals_stock_build(direct_pairs, layout):
    """Tensors, sample index, fitted parameters and batches of the directly built datasets are the
    stock constructor's, split by split."""
    stock, fast = direct_pairs[layout]
    assert fast.direct and not stock.direct
    assert list(stock.datasets) == list(fast.datasets) and "val" in fast.datasets
    for split, want in stock.datasets.items():
        got = fast.datasets[split]
        assert_same(want.data, got.data, f"{split}.data")
        assert want.index.equals(got.index), split
        assert want.decoded_index.equals(got.decoded_index), split
        assert_same_params(want.get_parameters(), got.get_parameters(), f"{split}.params")
        idx = list(range(0, len(want), 3))
        assert_same(stock_collate([want[i] for i in idx]), stock_collate([got[i] for i in idx]))
        assert_same(stock_collate([want[i] for i in idx]), fast.batches(split).__getitems__(idx))
    # What the model is built from.
    assert_same_params(stock.model_kwargs(), fast.model_kwargs(), "model_kwargs")


def test_direct_build_params_come_from_every_row(direct_pairs):
    """The fitted scales are the whole training split's, not the first-window template's."""
    stock, fast = direct_pairs["multi"]
    norm = fast.datasets["train"].target_normalizer.normalizers[0]
    ds = stock.datasets["train"]
    codes = ds.data["groups"][:, 0]
    first = int(codes[0])
    y = ds.data["target"][0][codes == first].double()
    assert abs(float(norm.norm_.loc[first, "center"]) - float(y.mean())) < 1e-4
    assert len(y) > fast.encoder_length + fast.prediction_length


def test_group_norm_is_get_norm(multi_dm):
    """The positional lookup of row scales equals GroupNormalizer.get_norm, unknown groups and NaN included."""
    import numpy as np
    import pandas as pd

    from zoo.tft.fastpath import group_norm

    norm = multi_dm.datasets["train"].target_normalizer.normalizers[1]
    codes = multi_dm.datasets["val"].data["groups"][:, 0].numpy()
    X = pd.DataFrame({"series": np.r_[codes, 999, codes[:5]]})
    assert np.array_equal(group_norm(norm, X), norm.get_norm(X))
    nan = copy_with_nan_scale(norm, int(codes[0]))
    assert np.array_equal(group_norm(nan, X), nan.get_norm(X))
    assert not np.isnan(group_norm(nan, X)).any()


def copy_with_nan_scale(norm, code):
    import copy

    out = copy.deepcopy(norm)
    out.norm_.loc[code, "scale"] = float("nan")
    return out

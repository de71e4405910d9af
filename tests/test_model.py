import pytest
import torch

from emoma.config import ModelConfig
from emoma.model import build_model


@pytest.mark.parametrize("n_features", [1, 3, 10, 46])
@pytest.mark.parametrize(
    "cbam, bidirectional, attention", [(True, False, True), (False, True, False), (True, True, True)]
)
def test_forward_shapes(n_features, cbam, bidirectional, attention):
    cfg = ModelConfig(cbam=cbam, bidirectional=bidirectional, attention=attention, lstm_layers=2)
    model = build_model(cfg, n_features, 3)
    assert model(torch.randn(5, n_features)).shape == (5, 3)


@pytest.mark.parametrize("pool, channels, fc", [("none", [8, 8, 8], 0), ("avg", [], 16), ("max", [4, 8, 16, 32], 32)])
def test_variants(pool, channels, fc):
    model = build_model(ModelConfig(pool=pool, conv_channels=channels, fc=fc, kernel_size=5), 7, 2)
    out = model(torch.randn(4, 7))
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_the_default_lstm_steps_over_cnn_positions():
    model = build_model(ModelConfig(context=4, conv_channels=[4, 8]), 20, 2)  # 20 features -> 5 positions
    steps = []
    model.lstm.register_forward_hook(lambda m, args, out: steps.append(out[0]))
    model(torch.randn(3, 4, 20))
    assert model.lstm.input_size == 8 and steps[0].shape[:2] == (3, 4 * 5)


@pytest.mark.parametrize("n_features, pool", [(5, "max"), (7, "max"), (20, "avg"), (9, "none")])  # >1 position each
def test_lstm_over_windows_steps_once_per_window_and_ignores_padded_windows(n_features, pool):
    cfg = ModelConfig(context=4, lstm_over="windows", pool=pool, conv_channels=[4, 8], dropout=0.0)
    model = build_model(cfg, n_features, 3).eval()
    steps = []
    model.lstm.register_forward_hook(lambda m, args, out: steps.append(out[0]))
    x = torch.randn(5, 4, n_features)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, :3] = False  # the first window of a run: only its own window is real
    model(x)
    assert steps[0].shape[:2] == (5, 4)  # one LSTM step per window
    out = model(x, mask)
    assert out.shape == (5, 3)
    changed = x.clone()
    changed[1, :3] = torch.randn(3, n_features)  # what a padded slot holds must not matter
    torch.testing.assert_close(model(changed, mask), out)
    assert not torch.allclose(model(changed), model(x))  # without the mask those windows are read

import pytest
import torch

from emoma.config import ModelConfig
from emoma.model import build_model


@pytest.mark.parametrize("n_features", [1, 3, 10, 46])
@pytest.mark.parametrize("cbam, bidirectional, attention", [(True, False, True), (False, True, False),
                                                             (True, True, True)])
def test_forward_shapes(n_features, cbam, bidirectional, attention):
    cfg = ModelConfig(cbam=cbam, bidirectional=bidirectional, attention=attention, lstm_layers=2)
    model = build_model(cfg, n_features, 3)
    assert model(torch.randn(5, n_features)).shape == (5, 3)


@pytest.mark.parametrize("pool, channels, fc", [("none", [8, 8, 8], 0), ("avg", [], 16), ("max", [4, 8, 16, 32], 32)])
def test_variants(pool, channels, fc):
    model = build_model(ModelConfig(pool=pool, conv_channels=channels, fc=fc, kernel_size=5), 7, 2)
    out = model(torch.randn(4, 7))
    assert out.shape == (4, 2) and torch.isfinite(out).all()

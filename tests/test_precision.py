"""Number formats for decoding: padded rows give the products of the unpadded ones."""

import torch
from torch import nn

from nmt.precision import PaddedRows, pad_linear_rows


def test_padded_rows_give_the_linear_layers_output_for_every_row_count():
    torch.manual_seed(0)
    linear = nn.Linear(32, 48)
    padded = PaddedRows(linear, multiple=64)
    for shape in [(1, 32), (7, 32), (64, 32), (65, 32), (3, 5, 32), (13, 1, 32)]:  # none, some and exact multiples
        x = torch.randn(*shape)
        out = padded(x)
        assert out.shape == (*shape[:-1], 48)
        torch.testing.assert_close(out, linear(x), atol=1e-6, rtol=1e-6)


def test_pad_linear_rows_wraps_every_linear_layer_and_keeps_the_output():
    from nmt.models.transformer import Transformer

    torch.manual_seed(1)
    model = Transformer(40, 40, layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64).eval()
    src = torch.randint(4, 40, (3, 9))
    tgt = torch.randint(4, 40, (3, 6))
    before = model(src, src == 0, tgt)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    pad_linear_rows(model)
    assert sum(isinstance(m, PaddedRows) for m in model.modules()) == n_linear > 0
    assert not any(type(m) is nn.Linear and not isinstance(p, PaddedRows) for p in model.modules() for m in p.children())
    torch.testing.assert_close(model(src, src == 0, tgt), before, atol=1e-5, rtol=1e-5)

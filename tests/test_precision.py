"""Number formats for decoding: which rows are padded, and padded rows decode like unpadded ones."""

from dataclasses import replace

import torch

from nmt.precision import decode_row_multiple


def test_decoding_pads_rows_only_for_bf16_products_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert decode_row_multiple(cpu, "bf16") == 64  # oneDNN: a kernel per shape
    assert decode_row_multiple(cpu, "fp32") == decode_row_multiple(cuda, "bf16") == 1


def test_rows_are_padded_finely_when_few_and_coarsely_when_many():
    from nmt.precision import padded_rows

    assert [padded_rows(n, 64) for n in (1, 16, 17, 128, 129, 256, 257, 1000)] == [
        16,
        16,
        32,
        128,
        160,
        256,
        320,
        1024,
    ]
    assert [padded_rows(n, 1) for n in (1, 7, 1000)] == [1, 7, 1000]  # no padding
    assert padded_rows(0, 64) == 0


def test_padded_rows_decode_like_unpadded_ones():
    from nmt.models.transformer import Transformer

    torch.manual_seed(1)
    model = Transformer(
        40, 40, layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64
    ).eval()
    src = torch.randint(4, 40, (3, 9))
    src[1, 6:] = 0  # a shorter sentence
    tgt = torch.randint(4, 40, (3, 6))
    full = model(src, src == 0, tgt)
    for multiple in (1, 8, 64):
        state = replace(model.start(src, src == 0), row_multiple=multiple)
        for t in range(tgt.size(1)):
            logits, state = model.step(tgt[:, t], state)
            assert logits.shape == (3, 40) and all(k.size(0) == 3 for kv in state.past for k in kv)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)


def test_packed_linear_layers_give_the_plain_layers_outputs_bit_for_bit():
    from torch import nn

    from nmt.models.transformer import Transformer
    from nmt.precision import PackedLinear, pack_linear_layers

    torch.manual_seed(2)
    model = (
        Transformer(40, 40, layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_positions=64)
        .eval()
        .to(torch.bfloat16)
    )
    src, tgt = torch.randint(4, 40, (3, 9)), torch.randint(4, 40, (3, 6))
    plain = model(src, src == 0, tgt)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    pack_linear_layers(model)
    packed = sum(isinstance(m, PackedLinear) for m in model.modules())
    # 0: this torch build cannot pack, and says so by leaving them
    assert packed in (0, n_linear) and n_linear > 0
    assert torch.equal(model(src, src == 0, tgt), plain)
    # each feed-forward block's first layer took its ReLU in (4: 2 encoder, 2 decoder layers)
    if packed:
        assert sum(m.attr == "relu" for m in model.modules() if isinstance(m, PackedLinear)) == 4
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    for shape in [(1, 32), (7, 32), (64, 32), (3, 5, 32)]:
        linear = nn.Linear(32, 48).to(torch.bfloat16)
        x = torch.randn(*shape, dtype=torch.bfloat16)
        if packed:
            assert torch.equal(PackedLinear(linear.weight, linear.bias, 64)(x), linear(x))
            assert torch.equal(
                PackedLinear(linear.weight, linear.bias, 64, relu=True)(x), torch.relu(linear(x))
            )
    fp32 = nn.Sequential(nn.Linear(8, 8))
    assert type(pack_linear_layers(fp32)[0]) is nn.Linear  # only bf16 layers are packed
    bf16 = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16))
    state = torch.get_rng_state()
    pack_linear_layers(bf16)
    # loading a translator leaves the random generator alone
    assert torch.equal(torch.get_rng_state(), state)


def test_attention_kernels_on_a_gpu_leave_cudnn_out_and_the_cpu_untouched():
    from nmt.precision import choose_attention_kernels

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        choose_attention_kernels(torch.device("cpu"))
        assert torch.backends.cuda.cudnn_sdp_enabled()
        # sets torch's flag; needs no GPU to do so
        choose_attention_kernels(torch.device("cuda", 0))
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert (
            torch.backends.cuda.flash_sdp_enabled()
            and torch.backends.cuda.mem_efficient_sdp_enabled()
        )
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)

import pytest
import torch

from model.config import ModelConfig
from model.lstm import CharLSTM, LSTMLayer


def test_step_is_the_notes_equations() -> None:
    torch.manual_seed(0)
    hid = 5
    layer = LSTMLayer(3, hid, peephole=True)
    with torch.no_grad():
        layer.peep.normal_()
    x, h, c = torch.randn(2, 3), torch.randn(2, hid), torch.randn(2, hid)
    w = torch.cat([layer.weight_h, layer.weight_x], dim=1)  # W_* acting on [h_{t-1}, x_t]
    hx = torch.cat([h, x], dim=1)
    blocks = dict(zip("ifco", (w[k * hid : (k + 1) * hid] for k in range(4)), strict=True))
    bias = dict(zip("ifco", layer.bias.split(hid), strict=True))
    p_i, p_f, p_o = layer.peep
    f = torch.sigmoid(hx @ blocks["f"].T + bias["f"] + p_f * c)
    i = torch.sigmoid(hx @ blocks["i"].T + bias["i"] + p_i * c)
    c_tilde = torch.tanh(hx @ blocks["c"].T + bias["c"])
    c_new = f * c + i * c_tilde
    o = torch.sigmoid(hx @ blocks["o"].T + bias["o"] + p_o * c_new)
    h_new = o * torch.tanh(c_new)
    out, hn, cn = layer(x[:, None], h, c)
    torch.testing.assert_close(hn, h_new)
    torch.testing.assert_close(cn, c_new)
    torch.testing.assert_close(out[:, 0], h_new)


def test_fused_training_path_equals_written_out_cell() -> None:
    torch.manual_seed(1)
    model = CharLSTM(ModelConfig(vocab_size=11, embed_size=4, hidden_size=8, num_layers=2))
    ids = torch.randint(0, 11, (3, 40))
    h, c = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    for a, b in zip(model(ids, h, c), model(ids, h, c, fused=True), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_peephole_weights_exist_only_with_the_flag() -> None:
    plain = CharLSTM(ModelConfig(vocab_size=5, hidden_size=4, embed_size=2))
    peep = CharLSTM(ModelConfig(vocab_size=5, hidden_size=4, embed_size=2, peephole=True))
    assert plain.layers[0].peep.numel() == 0
    assert peep.layers[0].peep.shape == (3, 4)


def test_forget_gate_bias_starts_at_one() -> None:
    layer = LSTMLayer(3, 4, peephole=False)
    assert layer.bias[4:8].tolist() == [1.0] * 4 and layer.bias[:4].tolist() == [0.0] * 4


def test_config_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig(vocab_size=5, hidden_size=0)
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"vocab_size": 5, "colour": "red"})

"""The LSTM cell of the notes, gates written out, with an optional peephole, stacked into a char model.

Per layer and time step, with [h, x] the concatenation of the previous hidden state and the input:
    f_t  = sigmoid(W_f [h_{t-1}, x_t] + b_f  (+ p_f * C_{t-1}))   forget gate
    i_t  = sigmoid(W_i [h_{t-1}, x_t] + b_i  (+ p_i * C_{t-1}))   input gate
    c~_t = tanh(W_c [h_{t-1}, x_t] + b_c)                           candidate
    C_t  = f_t * C_{t-1} + i_t * c~_t                               cell state (long-term memory)
    o_t  = sigmoid(W_o [h_{t-1}, x_t] + b_o  (+ p_o * C_t))         output gate
    h_t  = o_t * tanh(C_t)                                          hidden state (short-term memory)
The bracketed peephole terms exist only when `peephole=True`; they are diagonal (one weight per unit), which
is the peephole the ONNX LSTM operator implements. W_* [h, x] is split as W_x x + W_h h so the input part of
all time steps is one matrix product.

`LSTMLayer.forward` runs these equations step by step. Training the plain (no peephole) cell may instead use
PyTorch's fused LSTM kernel (`fused=True`), which computes the same equations with the same weights and gate
order about seven times faster on CPU; tests prove the two paths equal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.config import ModelConfig

# Order of the four gate blocks in `weight_x`, `weight_h` and `bias` (the same order as PyTorch's nn.LSTM).
GATES = ("i", "f", "c", "o")


class LSTMLayer(nn.Module):
    """One layer of the cell over a whole sequence."""

    def __init__(self, input_size: int, hidden_size: int, peephole: bool) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.peephole = peephole
        self.weight_x = nn.Parameter(torch.empty(4 * hidden_size, input_size))  # (4H, in): W_{i,f,c,o} on x
        self.weight_h = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))  # (4H, H): W_{i,f,c,o} on h
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))  # (4H,): b_{i,f,c,o}
        # (3, H): p_i, p_f, p_o; zero-size when the layer has no peephole so state dicts say which it is
        self.peep = nn.Parameter(torch.zeros(3 if peephole else 0, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in (self.weight_x, self.weight_h):
            nn.init.uniform_(w, -bound, bound)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[self.hidden_size : 2 * self.hidden_size] = 1.0  # forget bias 1: remember by default
            if self.peephole:
                nn.init.uniform_(self.peep, -bound, bound)

    def forward(self, x: Tensor, h: Tensor, c: Tensor, fused: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """x (batch, seq, in), h and c (batch, H) -> outputs (batch, seq, H), h_T, C_T."""
        if fused and not self.peephole:
            return self._fused(x, h, c)
        xw = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight_x.t())  # (batch*seq, 4H)
        xw = xw.view(x.shape[0], x.shape[1], -1)
        w_h = self.weight_h.t()  # (H, 4H)
        outputs = []
        for t in range(x.shape[1]):
            gates = torch.addmm(xw[:, t], h, w_h)  # (batch, 4H)
            h, c = self.step(gates, c)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h, c

    def _fused(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # PyTorch's kernel wants two biases (input and recurrent); the notes have one, so the second is zero.
        weights = [self.weight_x, self.weight_h, self.bias, torch.zeros_like(self.bias)]
        out, hn, cn = torch.lstm(x, (h[None], c[None]), weights, True, 1, 0.0, self.training, False, True)
        return out, hn[0], cn[0]

    def step(self, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-activations (batch, 4H) and C_{t-1} (batch, H) -> h_t, C_t: the notes' equations."""
        i, f, g, o = gates.chunk(4, dim=1)
        if self.peephole:
            i = i + self.peep[0] * c_prev
            f = f + self.peep[1] * c_prev
        f_t = torch.sigmoid(f)
        i_t = torch.sigmoid(i)
        c_tilde = torch.tanh(g)
        c_t = f_t * c_prev + i_t * c_tilde
        if self.peephole:
            o = o + self.peep[2] * c_t
        o_t = torch.sigmoid(o)
        h_t = o_t * torch.tanh(c_t)
        return h_t, c_t


class CharLSTM(nn.Module):
    """Embedding (one-hot times a matrix) -> stacked LSTM layers -> linear over the vocabulary."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_size)
        sizes = [config.embed_size] + [config.hidden_size] * (config.num_layers - 1)
        self.layers = nn.ModuleList(LSTMLayer(n, config.hidden_size, config.peephole) for n in sizes)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def zero_state(self, batch: int) -> tuple[Tensor, Tensor]:
        shape = (self.config.num_layers, batch, self.config.hidden_size)  # (layers, batch, hidden)
        device = self.head.weight.device
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, input_ids: Tensor, h0: Tensor, c0: Tensor, fused: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """input_ids (batch, seq); h0, c0 (layers, batch, hidden) -> logits (batch, seq, vocab), hn, cn."""
        x = self.embed(input_ids)
        hn, cn = [], []
        for layer, h, c in zip(self.layers, h0, c0, strict=True):
            x, h, c = layer(x, h, c, fused=fused)
            hn.append(h)
            cn.append(c)
        return self.head(x), torch.stack(hn), torch.stack(cn)

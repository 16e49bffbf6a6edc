"""Feed-forward blocks."""
from torch import nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (the transformer FFN). Names fc1/fc2 match timm and most official repos."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, drop: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

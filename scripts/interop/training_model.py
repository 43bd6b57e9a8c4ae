"""The model, data and training of tests/e2e/training_interop_tool.cpp, in
Python (any torch version): nn.Sequential(Linear(8, 16), ReLU(),
Linear(16, 4)) initialized by formula, Adam, and one step on fixed data.
Both sides compute the same arithmetic, so their results are compared bit
for bit."""
import torch
from torch import nn


def make_model():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            n = p.numel()
            p.copy_((torch.sin(torch.arange(n, dtype=torch.float) * 0.37 + i)
                     * 0.3).reshape(p.shape))
    return model


def make_adam(model, lr=0.01):
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99),
                            eps=1e-8, weight_decay=0.01)


def train_step(model, opt):
    x = torch.sin(torch.arange(32 * 8, dtype=torch.float).reshape(32, 8) * 0.1)
    y = torch.cos(torch.arange(32 * 4, dtype=torch.float).reshape(32, 4) * 0.2)
    opt.zero_grad()
    loss = (model(x) - y).pow(2).mean()
    loss.backward()
    opt.step()

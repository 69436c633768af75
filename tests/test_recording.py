"""ssmt_lib.recording: the hook recorders leave the model as they found it, also when the block raises."""
import pytest
import torch
from torch import nn

from ssmt_lib.attention import Attention
from ssmt_lib.recording import record_activation_and_gradient, record_attention, record_attention_masks


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_activation_and_gradient_equal_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    with record_activation_and_gradient(model[1]) as kept:
        model(x)[:, 1].sum().backward()
    assert _hook_count(model) == 0
    hidden = model[1](model[0](x)).detach().requires_grad_()  # the same activation, as a leaf
    model[2](hidden)[:, 1].sum().backward()
    assert torch.allclose(kept["activation"], hidden)
    assert torch.allclose(kept["gradient"], hidden.grad)


def test_recorders_remove_their_hooks_and_restore_fused_when_the_block_raises():
    layer = Attention(8, 2, fused=True)
    x = torch.randn(1, 3, 8)
    with pytest.raises(RuntimeError, match="stop"):
        with record_attention(layer) as maps, record_attention_masks(layer) as masks:
            layer(x, x, x)
            raise RuntimeError("stop")
    assert layer.fused and _hook_count(layer) == 0
    assert maps[""].shape == (1, 2, 3, 3) and masks[""] is None  # recorded before the error
    with pytest.raises(RuntimeError, match="stop"), record_activation_and_gradient(layer.proj):
        raise RuntimeError("stop")
    assert _hook_count(layer) == 0

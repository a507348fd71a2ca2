"""The gradients of one training step, worked out layer by layer instead of by autograd.

The network is small (tens of units) and so are its mini-batches, so a step's time goes to the
framework's cost per operation, not to arithmetic: autograd records a graph node per operation
and walks it back through its engine, and that costs more than the matrix products themselves
(a forward and backward pass on 512 events of 8 features: 0.86 ms through autograd, 0.41 ms here,
one thread). The chain rule here calls the kernels autograd's backward formulas call, on the
same operands in the same layout: the forward pass as ``F.linear`` (``addmm``); the weight
gradient as ``grad^T @ input``, the bias gradient as ``grad.sum(0)``, the input gradient as
``grad @ W``; ReLU's and the sigmoid's own backward kernels; the loss gradient as autograd's
formulas compute it. So the gradients equal autograd's to the bit (``tests/test_backprop.py``
holds every loss and output to it), and so does everything the detector learns.
"""

from __future__ import annotations

import torch

from ae_core.losses import feature_errors
from ae_core.network import Autoencoder, run_layers


@torch.no_grad()
def set_gradients(module: Autoencoder, inputs: torch.Tensor, target: torch.Tensor, loss: str,
                  output: str) -> torch.Tensor:
    """The mean reconstruction error of ``inputs`` against ``target`` (the loss of the step);
    each parameter's ``.grad`` set to its gradient."""
    layers = module.linears
    seen: list[torch.Tensor] = []
    h = run_layers(layers, inputs, seen)
    errors = feature_errors(h, target, loss, output)
    grad = _loss_gradient(h, target, loss, output, 1.0 / errors.numel())
    for k in range(len(layers) - 1, -1, -1):
        layer, below = layers[k][0], seen[k]
        layer.weight.grad = torch.mm(grad.t(), below)
        layer.bias.grad = grad.sum(0)
        if k > 0:
            grad = torch.mm(grad, layer.weight)
            if layers[k - 1][1]:  # the input of this layer is a ReLU's output
                grad = torch.ops.aten.threshold_backward(grad, below, 0)
    return errors.mean()


def _loss_gradient(logits: torch.Tensor, target: torch.Tensor, loss: str, output: str,
                   per_element: float) -> torch.Tensor:
    """d mean(feature_errors) / d logits."""
    if loss == "bce":
        return (torch.sigmoid(logits) - target) * per_element
    if output == "sigmoid":
        outputs = torch.sigmoid(logits)
        return torch.ops.aten.sigmoid_backward((2.0 * (outputs - target)) * per_element, outputs)
    return (2.0 * (logits - target)) * per_element


def adam_step(optimizer: torch.optim.Adam) -> None:
    """``optimizer.step()`` of a fused Adam whose parameters share one device and dtype, without
    the Python around its kernel (step hooks, profiler ranges, the compiler's guards, grouping by
    device: 0.14 ms of each step here, where the kernel takes 0.05 ms). The step's first call, which
    makes the moment buffers, is the optimizer's own; every later one makes the same kernel
    calls with the same arguments (``tests/test_backprop.py`` holds the weights to the bit)."""
    group = optimizer.param_groups[0]
    params = group["params"]
    states = [optimizer.state.get(p) for p in params]
    if len(optimizer.param_groups) > 1 or not group["fused"] or group["amsgrad"] or not all(states):
        optimizer.step()
        return
    steps = [s["step"] for s in states]  # type: ignore[index]
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],  # type: ignore[index]
                       [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False,  # type: ignore[index]
                       lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                       weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])

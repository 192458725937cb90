"""extrap: extrapolated SGD for large-batch training (Lin, Kong, Stich, Jaggi, ICML 2020).

    from extrap import ExtrapolatedSGD
    opt = ExtrapolatedSGD(model.parameters(), lr=0.4, lr_scale=8, perturbation="extrap", comm=comm)
    for x, y in loader:
        opt.zero_grad()
        opt.perturb()                    # to this worker's x̃ = x_t − γ g_{t-1}^k
        loss_fn(model(x), y).backward()
        opt.step()                       # restore x_t, average gradients, Nesterov update
"""

from .engines.ddp import ddp_buffer_kwargs, register_ddp
from .local_sgd import PostLocalSGD
from .loop import Attached, attach
from .optim import DIRECTIONS, PERTURBATIONS, REGISTRY, ExtrapolatedAdam, ExtrapolatedSGD, Perturbation
from .param_groups import no_decay_names, weight_decay_groups
from .schedules import Schedule, scaled_lr
from .smoothness import SmoothnessProbe

__version__ = "0.1.0"

__all__ = [
    "ExtrapolatedSGD", "ExtrapolatedAdam", "PERTURBATIONS", "REGISTRY", "Perturbation", "DIRECTIONS",
    "PostLocalSGD", "register_ddp", "ddp_buffer_kwargs", "attach", "Attached", "Schedule", "scaled_lr", "SmoothnessProbe",
    "weight_decay_groups", "no_decay_names", "__version__",
]

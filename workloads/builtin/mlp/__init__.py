"""mlp: a multi-layer perceptron classifier on random features (see `model.py`). Torch-free."""

from stepscope.workloads.builtin.base import BuiltinInfo
from stepscope.workloads.params import Param

INFO = BuiltinInfo(
    name="mlp",
    package=__name__,
    order=1,
    description="multi-layer perceptron classifier on random features",
    params=(
        Param("depth", int, 4, "hidden layers", minimum=1),
        Param("width", int, 256, "units per hidden layer", minimum=1),
        Param("input_dim", int, 256, "input features", minimum=1),
        Param("num_classes", int, 10, "output classes", minimum=2),
    ),
)

"""resnet: a ResNet image classifier, torchvision's layout (see `model.py`). Torch-free."""

from stepscope.workloads.builtin.base import BuiltinInfo
from stepscope.workloads.params import Param

INFO = BuiltinInfo(
    name="resnet",
    package=__name__,
    order=2,
    description="ResNet image classifier (basic blocks at 18/34, bottlenecks at 50/101)",
    params=(
        Param("depth", int, 18, "ResNet depth", choices=(18, 34, 50, 101)),
        Param("image_size", int, 32, "input height and width in pixels", minimum=8),
        Param("num_classes", int, 10, "output classes", minimum=2),
    ),
)

"""Image corruptions: pure, batched, jittable functions ``f(key, images, severity)``.

* :mod:`.noise`: the seed's four noise types with a continuous severity in [0, 1]
  (``gaussian``, ``salt_pepper``, ``fog``, ``occlusion``), registry ``NOISES``.
* :mod:`.imagenet_c`: the 15 ImageNet-C corruptions (``IMAGENET_C``) and the 4 held-out
  ones (``HELD_OUT``) with integer severities 1..5 and the ImageNet or CIFAR parameter
  table, registry ``CORRUPTIONS``. (Its ``fog`` is ImageNet-C's; reach the individual
  functions through ``CORRUPTIONS`` or the ``imagenet_c`` module.)

Images are float32 NHWC in [0, 1]; see docs/CORRUPTIONS.md for the definitions.
"""

from robust_vision.corruptions import imagenet_c
from robust_vision.corruptions.imagenet_c import (CORRUPTIONS, HELD_OUT, IMAGENET_C, apply_corruption, default_scale,
                                                  get_corruption)
from robust_vision.corruptions.noise import (NOISES, apply_noise, fog, fractal_haze, gaussian, get_noise, occlusion,
                                             salt_pepper)

__all__ = [
    "CORRUPTIONS",
    "HELD_OUT",
    "IMAGENET_C",
    "NOISES",
    "apply_corruption",
    "apply_noise",
    "default_scale",
    "fog",
    "fractal_haze",
    "gaussian",
    "get_corruption",
    "get_noise",
    "imagenet_c",
    "occlusion",
    "salt_pepper",
]

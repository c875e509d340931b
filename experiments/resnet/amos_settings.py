"""Amos' eta and slot shapes for ResNet: the library's general rule.

The reference has no ResNet table. By the general rule (reference section 2): the stem
convolution sees the normalized image (gain 1); every other convolution and the head see
ReLU outputs (gain 2); batch-norm scales 1.0 and shifts 0.5. Convolution slots keep only
the output-channel axis, ``(1, 1, 1, out)``, as in the reference CNN example.
"""

from __future__ import annotations

import amos

GAINS = {r"^stage_.*/(conv_\d|shortcut_conv)/kernel$": 2.0, r"^head/kernel$": 2.0}


def eta_fn() -> amos.ParamsFn:
    return amos.default_eta_fn(gains=GAINS)


def shape_fn() -> amos.ParamsFn:
    return amos.default_shape_fn()

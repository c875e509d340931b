"""Amos' eta and slot shapes for the LSTM language model (reference table, section 2).

The reference LSTM table (hidden h, memory m) maps onto experiments/lstm/models.py as:

| variable                    | eta            | here                                   |
|-----------------------------|----------------|----------------------------------------|
| core kernel (2h, 4h)        | (2h)^-1/4      | ``lstm_i/core/kernel``                 |
| output kernel               | (m*h)^-1/4     | ``output/kernel``; memory m = h here   |
| output bias                 | 0.5 * h^-1/4   | ``output/bias``                        |
| top-level normalize shift   | 0.5 * h^-1/4   | ``output_norm/bias``                   |
| embedding                   | h^-1/4         | ``embed/embedding``                    |
| other biases                | 0.5            | ``lstm_i/core/bias``                   |

The table has no cell normalization here (its "cell normalize shift" has no variable) and
no entry for the top normalization's scale, which takes the general rule's 1.0. Slots:
kernels reduce the first axis, the embedding its last axis (the library defaults).
"""

from __future__ import annotations

import amos

# The paper's PTB settings (reference section 3).
PTB_AMOS = dict(learning_rate=0.01, beta=0.98, momentum=None)
PTB_ADAM = dict(learning_rate=5e-4, b1=0.9, b2=0.99)


def eta_fn(hidden: int) -> amos.ParamsFn:
    quarter = hidden**-0.25
    return amos.default_eta_fn(
        overrides={
            r"lstm_\d+/core/kernel$": "prod(SHAPE[:-1]) ** -0.25",
            r"^output/kernel$": f"({hidden} * SHAPE[0]) ** -0.25",
            r"^output/bias$": 0.5 * quarter,
            r"^output_norm/bias$": 0.5 * quarter,
            r"^embed/embedding$": quarter,
        }
    )


def shape_fn() -> amos.ParamsFn:
    return amos.default_shape_fn()

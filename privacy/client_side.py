"""What a client does for DP when the server's Work asks for it (client-side noise placement).

The server sends ``dp_clip`` (C) and ``dp_noise_std`` (sigma C / sqrt(m), m = clients sent work this round) in
``Work.extra``; the client clips its whole delta and adds its share, so the m shares sum to N(0, (sigma C)^2)
and the server tops up the shares of clients that drop out.
"""

from __future__ import annotations

import numpy as np

from privacy.mechanism import privatize_on_client
from privacy.noise import noise_source
from protocol.messages import Work


def privatize_update(delta: dict[str, np.ndarray], work: Work) -> dict[str, np.ndarray]:
    if "dp_clip" not in work.extra:
        return delta
    source = noise_source(str(work.extra.get("dp_rng", "seeded")), int(work.seed) ^ 0x5EED)
    return privatize_on_client(delta, float(work.extra["dp_clip"]), float(work.extra["dp_noise_std"]), source)

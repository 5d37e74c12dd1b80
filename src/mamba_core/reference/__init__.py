"""Float64 numpy oracle of Mamba-1 (S6) and Mamba-2 (SSD): every backend is checked against it.

Readable, not fast. It follows docs/spec.md §3.4-3.5 (Mamba-1 forward and decode step), §4.4-4.6
(Mamba-2 forward, the chunked SSD algorithm of the Mamba-2 paper's Listing 1 =
``ssd_minimal_discrete`` in ``state-spaces/mamba: mamba_ssm/modules/ssd_minimal.py``, and the decode
step) and §1.2 (the pre-norm residual skeleton). Op names and signatures are the upstream ones
without ``_fn`` / ``_ref`` (``selective_scan_ref``, ``selective_state_update_ref``, ...); the
backends' ``ops`` modules mirror them exactly.

Rules kept here:

* numpy + stdlib only (plus ``mamba_core.config`` / ``errors``); every input is cast with
  ``np.asarray(x, np.float64)`` and all math is float64, so dtype policy questions (docs/spec.md §6)
  never arise inside the oracle.
* Activations are channels-last, ``(batch, seqlen, ...)``; weights keep the torch layout of the
  canonical checkpoint (conv weight ``(C, 1, K)``; ops take it squeezed to ``(C, K)``).
* Pure functions: inputs are never mutated; states are returned, not updated in place.

Dimension legend (upper case in docstrings, lower case in einsum strings):

====  =========================  ====  ==========================
B     batch                      H     heads (``nheads``)
L     sequence length            P     head dim (``headdim``)
D     ``d_model``                G     ``ngroups``
E     ``d_inner = expand * D``   Q     SSD ``chunk_size``
N     ``d_state``                V     padded vocab size
K     ``d_conv``                 R     ``dt_rank`` (Mamba-1)
====  =========================  ====  ==========================

The package splits along concepts: ``ops`` (conv, scans, SSD, norms), one module per layer kind
(``mamba1``, ``mamba2``) registered in ``layers``, ``model`` (backbone and LM composed per layer kind)
and ``initialization`` (random checkpoints); everything public is re-exported here.
"""

from mamba_core.reference.initialization import init_weights as init_weights
from mamba_core.reference.mamba1 import mamba1_mixer as mamba1_mixer
from mamba_core.reference.mamba1 import mamba1_mixer_step as mamba1_mixer_step
from mamba_core.reference.mamba2 import mamba2_mixer as mamba2_mixer
from mamba_core.reference.mamba2 import mamba2_mixer_step as mamba2_mixer_step
from mamba_core.reference.model import backbone_forward as backbone_forward
from mamba_core.reference.model import backbone_step as backbone_step
from mamba_core.reference.model import layer_weights as layer_weights
from mamba_core.reference.model import lm_forward as lm_forward
from mamba_core.reference.model import lm_step as lm_step
from mamba_core.reference.ops import causal_conv1d as causal_conv1d
from mamba_core.reference.ops import causal_conv1d_update as causal_conv1d_update
from mamba_core.reference.ops import rmsnorm as rmsnorm
from mamba_core.reference.ops import rmsnorm_gated as rmsnorm_gated
from mamba_core.reference.ops import segsum as segsum
from mamba_core.reference.ops import selective_scan as selective_scan
from mamba_core.reference.ops import selective_state_update as selective_state_update
from mamba_core.reference.ops import softplus as softplus
from mamba_core.reference.ops import ssd_chunked as ssd_chunked
from mamba_core.reference.ops import ssd_scan as ssd_scan
from mamba_core.reference.ops import ssd_state_update as ssd_state_update

__all__ = [
    "backbone_forward",
    "backbone_step",
    "causal_conv1d",
    "causal_conv1d_update",
    "init_weights",
    "layer_weights",
    "lm_forward",
    "lm_step",
    "mamba1_mixer",
    "mamba1_mixer_step",
    "mamba2_mixer",
    "mamba2_mixer_step",
    "rmsnorm",
    "rmsnorm_gated",
    "segsum",
    "selective_scan",
    "selective_state_update",
    "softplus",
    "ssd_chunked",
    "ssd_scan",
    "ssd_state_update",
]

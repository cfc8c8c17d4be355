"""The reward-model variants a run can train: the one place their names are spelled.

Every stage asks this registry what a variant needs instead of comparing names:

=========  ===========================  ===================  =========================
name       user input to the model      an unseen user       built as
=========  ===========================  ===================  =========================
copl       GNN user embedding (graph)   adapted embedding    MoLE gated by e_u
uniform    none                         same scores          one LoRA, no user
oracle     none, one model per group    its group's model    ``uniform`` per group
no_gnn     free table row per user      not scored (null)    MoLE gated by a table row
no_mole    GNN user embedding (graph)   adapted embedding    user token + one LoRA
i2e        free table row per user      row fitted on labels user token + one LoRA
i2e_proxy  P mixing logits per user     logits fitted        token of a proxy mix + LoRA
pal        K mixing logits per user     logits fitted        ideal points, K prototypes
pref       K weights per user (SVD)     weights fitted       λ_uᵀφ(x), K base rewards
lore       K mixing logits per user     logits fitted        frozen backbone, basis V
vpl        the user's labelled pairs    its pairs encoded    frozen backbone, latent z
=========  ===========================  ===================  =========================

The baselines' equations and sources are in copl_ray/reward/baselines.py. ``fit``: the
unseen user's row is fitted on their few labels with every other weight frozen
(copl_ray/reward/fit_users.py), the way PAL, PReF and LoRe onboard a new user; ``encode``:
VPL's encoder reads the unseen user's labelled pairs, no optimisation.

A new variant (a baseline) adds one :class:`Variant` to :data:`REGISTRY`; nothing else
names it except the model code that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

COPL = "copl"
UNIFORM = "uniform"
ORACLE = "oracle"
NO_GNN = "no_gnn"
NO_MOLE = "no_mole"
I2E = "i2e"
I2E_PROXY = "i2e_proxy"
PAL = "pal"
PREF = "pref"
LORE = "lore"
VPL = "vpl"

UserInput = Literal["graph", "table", "context", "none"]
UnseenRule = Literal["adapt", "shared", "group", "none", "fit", "encode"]


@dataclass(frozen=True)
class Variant:
    """What a variant takes and how it answers for a user the training never saw.

    ``user_input``: ``graph`` = the GNN stage's user embedding (trained or adapted);
    ``table`` = a free embedding row per seen user learned with the reward model;
    ``context`` = the user's labelled pairs (VPL); ``none`` = no user input. ``unseen``: ``adapt`` = the graph-adapted embedding,
    ``shared`` = the user-free scores, ``group`` = the model of the user's known group,
    ``none`` = not scored, ``fit`` = its table row fitted on its labels, the rest frozen,
    ``encode`` = its labelled pairs encoded (no optimisation).
    ``architecture`` is the :class:`PersonalRewardModel` variant the
    weights are built as (the oracle trains one ``uniform`` model per group).
    """

    name: str
    label: str
    user_input: UserInput
    unseen: UnseenRule
    architecture: str
    per_group: bool = False

    @property
    def uses_graph(self) -> bool:
        return self.user_input == "graph"

    @property
    def adapts(self) -> bool:
        """Answers an unseen user from that user's own labels (a labels curve exists)."""
        return self.unseen in ("adapt", "fit", "encode")


REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(ORACLE, "Oracle (per-group BTL)", "none", "group", UNIFORM, per_group=True),
        Variant(UNIFORM, "Uniform (one BTL)", "none", "shared", UNIFORM),
        Variant(COPL, "CoPL", "graph", "adapt", COPL),
        Variant(NO_GNN, "CoPL w/o GNN (learned user emb.)", "table", "none", NO_GNN),
        Variant(NO_MOLE, "CoPL w/o MoLE (user token, one LoRA)", "graph", "adapt", NO_MOLE),
        Variant(I2E, "I2E (user token)", "table", "fit", I2E),
        Variant(I2E_PROXY, "I2E-proxy (mix of P proxies)", "table", "fit", I2E_PROXY),
        Variant(PAL, "PAL (ideal points)", "table", "fit", PAL),
        Variant(PREF, "PReF (K base rewards)", "table", "fit", PREF),
        Variant(LORE, "LoRe (frozen, low-rank)", "table", "fit", LORE),
        Variant(VPL, "VPL (variational latent)", "context", "encode", VPL),
    )
}
# Order of the report's rows.
REPORT_ORDER = tuple(REGISTRY)
# The architectures PersonalRewardModel builds.
ARCHITECTURES = tuple(dict.fromkeys(v.architecture for v in REGISTRY.values()))
# Models a run trains when the config does not say.
DEFAULT_MODELS = (COPL, UNIFORM, ORACLE)
# The personalised baselines of the comparison (preset tiny-baselines trains them all).
BASELINES = (I2E, I2E_PROXY, VPL, PAL, PREF, LORE)


def variant(name: str) -> Variant:
    """The registered variant ``name``; unknown names fail in one line naming the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(REGISTRY)})") from None

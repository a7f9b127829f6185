"""The paper's hyperparameters, in one place.

Every analysis takes a :class:`PaperConfig` (or the relevant field of it) so a user can change one
value without touching code. Each default is the value Dai et al. (ACL 2022) used, with the reason
in the comment beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kn_lens.errors import KnLensError

#: Rows per forward/backward pass when none is given, by device type. On the CPU larger passes
#: gain nothing and cost memory; a GPU needs large passes to fill it: on one H100, bert-base bags
#: cost 0.149 s/prompt at 64 rows, 0.019 at 1024 and 0.014 at 4096 (benchmarks/README.md).
DEFAULT_BATCH_SIZE = {"cpu": 64, "cuda": 2048}


#: Attribution precisions by name (``kn_lens.attribution.DTYPES`` maps them to torch dtypes); here
#: so that the command line can list them without importing torch.
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: Attribution methods, named baselines and objectives (``kn_lens.attribution``), torch-free.
METHOD_NAMES: tuple[str, ...] = ("ig", "grad_x_act", "activation")
BASELINE_NAMES: tuple[str, ...] = ("zero", "mean")
OBJECTIVE_NAMES: tuple[str, ...] = ("prob", "logprob")

#: The analyses by name, in pipeline order: exactly the keys of the registry,
#: ``kn_lens.experiments.ANALYSES`` (whose modules import torch); here so that the command line
#: can name them without importing torch. A test checks the two agree.
ANALYSIS_NAMES: tuple[str, ...] = (
    "identify",
    "modify",
    "heldout",
    "localize",
    "distant",
    "trigger",
    "update",
    "erase",
)


def default_batch_size(device: object) -> int:
    """Rows per pass for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``)."""
    kind = str(device).split(":")[0]
    return DEFAULT_BATCH_SIZE.get(kind, DEFAULT_BATCH_SIZE["cpu"])


@dataclass(frozen=True)
class Compute:
    """Where and how the pipeline computes; none of it changes what the method finds, except
    ``dtype`` (an approximation, part of the scores' fingerprint when not float32).

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... (None: cuda when available, else cpu).
    ``batch_size``: rows per forward/backward pass (None: :func:`default_batch_size` of the
    device the model is on, the one default used by every step). ``dtype``: precision of the
    attribution passes, one of :data:`DTYPE_NAMES` (None: float32, or what the run folder
    recorded). ``threads``: torch CPU threads, per Ray actor with the Ray executor (None: 1 for
    the built-in model on the CPU, else torch's choice).

    :class:`PaperConfig` keeps the method's settings; its ``batch_size`` and ``dtype`` fields are
    deprecated mirrors that the pipeline fills from this (:meth:`apply`).
    """

    device: str | None = None
    batch_size: int | None = None
    dtype: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise KnLensError(f"Compute.dtype must be one of {DTYPE_NAMES}, got {self.dtype!r}")
        for name in ("batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise KnLensError(f"Compute.{name} must be a positive integer, got {value!r}")

    def rows(self, device: object = None) -> int:
        """Rows per pass: ``batch_size``, else the default of ``device`` (else of ``self.device``,
        else the CPU's)."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return default_batch_size(device or self.device or "cpu")

    def apply(self, config: PaperConfig, device: object = None) -> PaperConfig:
        """``config`` with its mirrors ``batch_size`` and ``dtype`` set from this (a mirror the
        caller changed from PaperConfig's default is kept while this one leaves it unset)."""
        paper = PaperConfig()
        batch = self.batch_size
        if batch is None and config.batch_size != paper.batch_size:
            batch = config.batch_size
        dtype = self.dtype or config.dtype
        return config.with_(batch_size=replace(self, batch_size=batch).rows(device), dtype=dtype)


@dataclass(frozen=True)
class PaperConfig:
    """Hyperparameters of the knowledge-neuron pipeline, defaulting to the paper's values."""

    # --- attribution -------------------------------------------------------------------------
    steps: int = 20  # m: Riemann steps of integrated gradients; the paper found 20 sufficient.
    # Deprecated mirrors of Compute.batch_size / Compute.dtype (compute settings, not the
    # method's): the pipeline fills them from its Compute (Compute.apply). batch_size: rows
    # (prompt x alpha x layer) per pass, bounds memory only; score_bag and find_knowledge_neurons
    # use default_batch_size(the model's device) while it is left at 64.
    batch_size: int = 64
    # Precision of the integrated-gradients passes: float32 is exact; bfloat16 / float16 are opt-in
    # approximations (autocast; the clean pass, alpha grid and sums stay float32).
    dtype: str = "float32"
    # How "our" neurons are scored: "ig" (integrated gradients, the paper's) or "grad_x_act"
    # (attribution patching: one forward and one backward pass). The activation baseline is
    # always scored beside it.
    method: str = "ig"
    # Integrated gradients' baseline: "zero" (the paper's) or "mean" (the mean activation over the
    # fact's prompts, AMIG; Chen et al. 2024).
    baseline: str = "zero"
    # What the attribution explains: "prob" = p(answer) (the paper's) or "logprob" = log p(answer).
    objective: str = "prob"

    # --- identification ----------------------------------------------------------------------
    t: float = 0.2  # coarse threshold: keep neurons >= t * the prompt's maximum attribution.
    p: float = 0.7  # sharing threshold: a neuron must be coarse in >= p of the bag's prompts.
    min_shared_prompts: int = 3  # ... and in at least this many prompts, whatever p says.
    p_step: float = 0.05  # adaptive p moves by this much each round.
    p_rounds: int = 6  # at most this many adaptive rounds per relation.
    target_neurons: tuple[float, float] = (2.0, 5.0)  # aim: mean neurons per fact in this range.
    baseline_t: float = 0.5  # the activation baseline uses a higher coarse threshold.

    # --- which facts the analyses measure -----------------------------------------------------
    # The study's rule: the model knows a fact when the gold answer's first token is top-1 on at
    # least this share of its prompts. Every analysis but identify measures the known facts only
    # (the others are listed with why); 0 measures every fact.
    known_share: float = 0.5

    # --- statistics --------------------------------------------------------------------------
    random_other_facts: int = 100  # overlap of a fact with this many facts of other relations.

    # --- suppress / amplify ------------------------------------------------------------------
    amplify_factor: float = 2.0  # amplify multiplies the activation by 2; suppress sets it to 0.
    # a control beside the paper's: as many random neurons per fact, from the same layers as its
    # knowledge neurons, suppressed and amplified the same way (method "random").
    modify_random: bool = True

    # --- updating facts ----------------------------------------------------------------------
    lambda1: float = 1.0  # weight of subtracting the old answer's embedding.
    lambda2: float = 8.0  # weight of adding the new answer's embedding.
    max_relation_share: float = 0.1  # drop neurons shared by > 10% of the relation's facts.
    ppl_bags: int = 5  # perplexity on 5 random bags of the same / other relations.

    # --- erasing relations -------------------------------------------------------------------
    erase_top: int = 20  # zero the 20 most frequent knowledge neurons of the relation.

    # --- web prompts ---------------------------------------------------------------------------
    max_tokens: int = 512  # BERT's context; web sentences are truncated around [MASK].
    t2_first_words: int = 50  # T2 masks one random word among the first 50.
    top_k_prompts: int = 3  # activating prompts: keep the top and bottom k.

    # --- comparing localisation methods (localize; beyond the paper) -------------------------
    localize_facts: int = 5  # facts of the same / of other relations measured per fact (cheap).
    localize_foils: int = 3  # foils of the contrastive IG: other objects of the same relation.
    # At most this many facts measured anew per localize call (-1: all; 0: none, only the facts
    # kept by earlier calls are summarised); the others wait for the next call, which resumes (a
    # long study runs in slices, each leaving a partial results.json).
    localize_max_new: int = -1

    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, allowed in (
            ("method", ("ig", "grad_x_act")),
            ("dtype", DTYPE_NAMES),
            ("baseline", BASELINE_NAMES),
            ("objective", OBJECTIVE_NAMES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise KnLensError(f"PaperConfig.{name} must be one of {allowed}, got {value!r}")
        if not 0.0 <= float(self.known_share) <= 1.0:
            raise KnLensError(
                f"PaperConfig.known_share must be in [0, 1], got {self.known_share!r}"
            )

    def with_(self, **changes: Any) -> PaperConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

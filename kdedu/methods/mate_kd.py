"""MATE-KD (Rashid, Lioutas & Rezagholizadeh, ACL 2021; seed deck 000, "Improving Data Augmentation for KD").

KD matches the student to the teacher on the training sentences only; elsewhere the two may disagree (the deck's
"data gap"). MATE-KD ("Masked Adversarial TExt") trains a *generator* to write the sentences on which they
disagree most, and trains the student on them as well:

* **Generator.** A masked language model (:class:`~kdedu.models.MaskedLM`, or a Hugging Face ``...ForMaskedLM``)
  rewrites about 30 % of the tokens of a training sentence: they are replaced by ``[MASK]``
  (:func:`kdedu.models.mask_tokens`) and filled with the generator's predictions.
* **Maximisation step** (:meth:`MATEKD.maximise`): the generator is updated to *raise*
  ``KL(p_t(x') ‖ p_s(x'))`` on its own output ``x'``. Text is discrete, so the gradient reaches the generator
  through a Gumbel-softmax relaxation (:func:`gumbel_softmax`): each filled position becomes a soft one-hot
  vector ``y`` over the vocabulary, and the teacher and the student read it as the word vector ``y · E``, their
  word-embedding matrix ``E`` times ``y`` (``inputs_embeds``); the other positions keep their own word vectors.
  Like the official code, the forward pass uses the hard one-hot (the sampled token) and the backward pass the
  soft one (the straight-through estimator), at Gumbel temperature ``tau = 1``. (The official code ascends the
  cross-entropy ``-sum p_t log p_s``, the KL plus the teacher's entropy; we follow the paper and the deck.)
* **Minimisation step** (:meth:`MATEKD.forward`): the student is trained on the original batch with the deck's
  loss, ``(1 - alpha) CE(y, S(x)) + alpha T^2 KL(p_t(x) ‖ p_s(x))`` (:func:`kdedu.losses.distillation_loss`),
  plus the KD term on the generated batch ``x'``, which has no label. The official code weights the three terms
  ``1/3, 1/3, 1/3`` at ``T = 1``: that is ``alpha = 0.5``, ``adv_weight = 1/3`` here, the defaults.
* **Schedule.** The official code alternates ``n_G = 10`` generator updates and ``n_S = 100`` student updates
  (each on a new batch). :func:`kdedu.train.fit` gives the student one update per batch, so here every
  ``student_steps``-th batch first gets ``generator_steps`` generator updates, each on that batch with a fresh mask
  and fresh noise. The generator has its own optimiser (AdamW, ``generator_lr``; the official code uses 5e-7 for
  a pretrained DistilRoBERTa generator, and clips its gradient norm at 5).

``adversarial=False`` is the control "the same generator without the adversarial step": the student trains on
the pretrained generator's fills (samples from the masked LM), and the generator never changes.

:class:`AdversarialKD` is the continuous version the deck describes for the maximisation step: "taking the
gradient of the loss function w.r.t. the input samples, we perturb the training points in the direction of their
gradients iteratively to increase the loss between two networks". It needs no generator, and works on any input
that has a gradient (the book uses it on digits).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative, check_positive_int, check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy
from kdedu.models.mlm import MaskedLM, mask_tokens, special_token_ids
from kdedu.outputs import attention_mask_of, input_ids_of, run
from kdedu.train import Distiller

__all__ = ["gumbel_noise", "gumbel_softmax", "word_embeddings", "augmented_terms", "MATEKD", "AdversarialKD"]


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard Gumbel noise ``g = -log(-log U)``, ``U ~ Uniform(0, 1)`` (drawn on the CPU when ``generator`` is
    given, so a seeded generator gives the same noise on every device)."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device="cpu" if generator is not None else device)
    u = u.clamp(torch.finfo(dtype).tiny, 1.0 - torch.finfo(dtype).eps)             # log(0) never happens
    return (-torch.log(-torch.log(u))).to(device if device is not None else u.device)


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = True,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """The Gumbel-softmax relaxation of a sample from ``softmax(logits)`` (Jang et al. 2017; Maddison et al. 2017).

    ``y = softmax((log_softmax(logits) + g) / tau)`` with Gumbel noise ``g`` (:func:`gumbel_noise`, or ``noise``
    to fix it). ``argmax(logits + g)`` is an exact sample of the categorical distribution (the Gumbel-max trick);
    ``y`` is a differentiable stand-in that tends to that one-hot vector as ``tau -> 0``. ``hard=True`` returns the
    one-hot vector in the forward pass and the gradient of ``y`` in the backward pass (straight-through), as
    MATE-KD's official code does. Shapes ``[..., V]`` in, ``[..., V]`` out.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor [..., V]")
    check_temperature(tau)
    if noise is None:
        noise = gumbel_noise(logits.shape, device=logits.device, dtype=logits.dtype)
    elif noise.shape != logits.shape:
        raise ValueError(f"noise must have the logits' shape {tuple(logits.shape)}, got {tuple(noise.shape)}")
    y = torch.softmax((torch.log_softmax(logits, -1) + noise) / tau, dim=-1)        # [..., V]
    if not hard:
        return y
    one_hot = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0)   # [..., V]
    return one_hot + y - y.detach()                                                # value: one-hot; gradient: y's


def word_embeddings(model: nn.Module) -> nn.Embedding:
    """The word-embedding table of a text model: a Hugging Face model's ``get_input_embeddings()``, or that of the
    ``encoder`` of a :class:`~kdedu.models.SequenceClassifier`."""
    for owner in (model, getattr(model, "encoder", None)):
        get = getattr(owner, "get_input_embeddings", None)
        if callable(get) and isinstance(get(), nn.Embedding):
            return get()
    raise TypeError(f"{type(model).__name__} has no word-embedding table (no get_input_embeddings(), on the model or "
                    f"its .encoder)")


def augmented_terms(z_s, z_t, y, z_s_aug, z_t_aug, alpha: float, temperature: float,
                    adv_weight: float) -> dict[str, torch.Tensor]:
    """The minimisation loss of MATE-KD and :class:`AdversarialKD`, as named terms that sum to
    ``(1 - w) [(1 - alpha) CE(y, z_s) + alpha T^2 KL(p_t ‖ p_s)] + w T^2 KL(p_t(x') ‖ p_s(x'))``, ``w = adv_weight``:
    the deck's loss on the originals (:func:`kdedu.losses.distillation_loss`), and the KD term alone on the
    augmented inputs, which have no labels."""
    keep = 1.0 - adv_weight
    return {"ce": keep * (1 - alpha) * cross_entropy(z_s, y),
            "kd": keep * alpha * losses.kd_loss(z_s, z_t, temperature),
            "adv": adv_weight * losses.kd_loss(z_s_aug, z_t_aug, temperature)}


class MATEKD(Distiller):
    """MATE-KD: ``{"ce", "kd"}`` on the batch and ``{"adv"}`` on the generator's rewrite of it (module docstring).

    Args:
        student, teacher: classifiers over the same tokenizer (:class:`~kdedu.models.SequenceClassifier` or Hugging
            Face ``...ForSequenceClassification``); they must accept ``inputs_embeds``.
        generator: a masked LM over that tokenizer (:func:`kdedu.zoo.masked_lm`, or :func:`kdedu.models.
            load_masked_lm`). It is copied: the method trains its own copy (``method.generator``), every
            parameter but the word-embedding table, which stays tied to the output.
        alpha, temperature: the deck's loss on the originals (``temperature`` also on the generated batch).
        adv_weight: the weight ``w`` of the generated batch (see :func:`augmented_terms`).
        rate: the share of tokens rewritten (MATE-KD: 0.3). tau: the Gumbel-softmax temperature (1).
        generator_lr, generator_steps, student_steps, max_grad_norm: the maximisation schedule (module docstring).
        adversarial: ``False`` turns the maximisation step off (the "random fills" control).
        tokenizer: to read ``[MASK]`` and the special tokens; default ``generator.tokenizer``.
        seed: seeds the masks and the Gumbel noise, with one stream for the generated batches and another for the
            maximisation, so ``adversarial=True`` and ``False`` rewrite the same positions of the same batches
            with the same noise. ``None``: torch's global RNG.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, generator: nn.Module, alpha: float = 0.5,
                 temperature: float = 1.0, adv_weight: float = 1 / 3, rate: float = 0.3, tau: float = 1.0,
                 generator_lr: float = 5e-7, generator_steps: int = 10, student_steps: int = 100,
                 max_grad_norm: float = 5.0, adversarial: bool = True, tokenizer=None, seed: int | None = 0):
        if teacher is None or not isinstance(generator, nn.Module):
            raise TypeError("MATEKD needs a teacher and a generator (torch modules)")
        super().__init__(student, teacher)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.adv_weight = check_unit_interval("adv_weight", adv_weight)
        self.rate = check_unit_interval("rate", rate)
        self.tau = check_temperature(tau)
        self.generator_lr = check_nonnegative("generator_lr", generator_lr)
        self.max_grad_norm = check_nonnegative("max_grad_norm", max_grad_norm)
        self.generator_steps = check_positive_int("generator_steps", generator_steps)
        self.student_steps = check_positive_int("student_steps", student_steps)
        self.adversarial = bool(adversarial)
        tokenizer = tokenizer if tokenizer is not None else getattr(generator, "tokenizer", None)
        if tokenizer is None or getattr(tokenizer, "mask_token_id", None) is None:
            raise ValueError("tokenizer: give the generator's tokenizer (with a [MASK] token), or attach it as "
                             "generator.tokenizer (kdedu.zoo.masked_lm does)")
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.special_ids = special_token_ids(tokenizer)
        sizes = {name: word_embeddings(m).weight.shape[0] for name, m in
                 (("student", student), ("teacher", teacher), ("generator", generator))}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"student, teacher and generator must share one vocabulary (tokenizer); their "
                             f"word-embedding tables have {sizes} rows")
        self.generator = copy.deepcopy(generator)                     # ours to train; the cached one stays as it is
        self.generator.requires_grad_(True)
        word_embeddings(self.generator).weight.requires_grad_(False)  # tied to the output projection, kept
        self.generator.train(self.training)
        self.seed = seed
        self._rng = {k: torch.Generator().manual_seed(seed + i) for i, k in enumerate(("generate", "maximise"))} \
            if seed is not None else {"generate": None, "maximise": None}
        self._optimizer = None
        self.batches_seen = 0
        self.generator_log: list[float] = []  # the divergence on the generator's output at each maximisation update

    def trainable_parameters(self):
        """What ``fit``'s optimiser updates: the student only. The generator has its own optimiser."""
        return (p for p in self.student.parameters() if p.requires_grad)

    # --- the generator ------------------------------------------------------------------------------------------
    def fill_logits(self, masked: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The generator's logits at the masked positions, ``(n, V)``; special tokens are never written."""
        if isinstance(self.generator, MaskedLM):
            z = self.generator(masked, attention_mask, positions=positions)                        # (n, V)
        else:
            z = run(self.generator, {"input_ids": masked, "attention_mask": attention_mask}).require_logits(
                "the generator")[positions]                                                        # (n, V)
        banned = torch.as_tensor(self.special_ids, device=z.device)
        return z.index_fill(-1, banned, float("-inf"))

    def _mask(self, ids: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(ids, self.mask_token_id, self.special_ids, self.rate, generator=self._rng[stream])

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 stream: str = "generate") -> tuple[torch.Tensor, torch.Tensor]:
        """Rewrite a batch: ``(new_ids, positions)``. About ``rate`` of the tokens are masked and each is filled
        with a sample of the generator's distribution there (the Gumbel-max trick: the forward value of
        :func:`gumbel_softmax`)."""
        attention_mask = self._attention_mask(input_ids, attention_mask)
        masked, positions = self._mask(input_ids, stream)
        z = self.fill_logits(masked, attention_mask, positions)                              # (n, V)
        noise = gumbel_noise(z.shape, self._rng[stream], z.device, z.dtype)
        fills = (z + noise).argmax(-1)                                                             # (n,)
        return input_ids.index_put((positions,), fills), positions

    def divergence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                   soft_tokens: torch.Tensor) -> torch.Tensor:
        """``KL(p_t(x') ‖ p_s(x'))`` at ``T = 1`` (batch mean) on the text ``x'`` whose tokens at ``positions`` are the
        ``(n, V)`` soft one-hot rows ``soft_tokens``: each model reads them through its own word embeddings,
        ``soft_tokens @ E``, and the other tokens as usual. Differentiable in ``soft_tokens``."""
        logits = []
        for model in (self.teacher, self.student):
            E = word_embeddings(model).weight                                                      # (V, H)
            embeds = E[input_ids].index_put((positions,), soft_tokens.to(E.dtype) @ E)             # (B, L, H)
            logits.append(run(model, {"inputs_embeds": embeds, "attention_mask": attention_mask}).require_logits())
        z_t, z_s = logits
        return losses.kd_loss(z_s, z_t, 1.0)

    def maximise(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 noise: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> float:
        """One maximisation update of the generator: gradient *ascent* on :meth:`divergence` of its Gumbel-softmax
        output, with respect to the generator's parameters only (the student's gradients are untouched).
        ``positions`` and ``noise`` fix the mask and the Gumbel noise (the tests use them); by default both are
        drawn afresh. Returns the divergence before the update."""
        attention_mask = self._attention_mask(input_ids, attention_mask)
        if positions is None:
            masked, positions = self._mask(input_ids, "maximise")
        else:
            masked = input_ids.masked_fill(positions, self.mask_token_id)
        params = [p for p in self.generator.parameters() if p.requires_grad]
        with torch.enable_grad():
            z = self.fill_logits(masked, attention_mask, positions)                          # (n, V)
            if noise is None:
                noise = gumbel_noise(z.shape, self._rng["maximise"], z.device, z.dtype)
            soft = gumbel_softmax(z, self.tau, hard=True, noise=noise)                             # (n, V)
            kl = self.divergence(input_ids, attention_mask, positions, soft)
            grads = torch.autograd.grad(-kl, params, allow_unused=True)                            # ascent on KL
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self._generator_optimizer().step()
        for p in params:
            p.grad = None
        self.generator_log.append(kl.item())
        return self.generator_log[-1]

    def _generator_optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:  # made at the first update, once fit has moved the generator to its device
            self._optimizer = torch.optim.AdamW([p for p in self.generator.parameters() if p.requires_grad],
                                                lr=self.generator_lr)
        return self._optimizer

    def _attention_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is not None:
            return attention_mask
        mask = attention_mask_of(input_ids, self.student)
        return mask if mask is not None else torch.ones_like(input_ids)

    # --- the student ---------------------------------------------------------------------------------------------
    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = input_ids_of(x)
        if ids is None:
            raise TypeError(f"MATEKD needs token ids: (input_ids, y) batches or dicts with 'input_ids', got "
                            f"{type(x).__name__}")
        if y is None:
            raise ValueError("MATEKD needs labels for the cross-entropy term on the original batch")
        mask = self._attention_mask(ids, x.get("attention_mask") if isinstance(x, dict) else None)
        if self.adversarial and self.training and self.batches_seen % self.student_steps == 0:
            for _ in range(self.generator_steps):                                     # the maximisation step
                self.maximise(ids, mask)
        if self.training:
            self.batches_seen += 1
        new_ids, _ = self.generate(ids, mask)                                          # x', discrete tokens
        both = {"input_ids": torch.cat([ids, new_ids]), "attention_mask": torch.cat([mask, mask])}  # x and x': (2B, L)
        z_s, z_s_gen = run(self.student, both).require_logits("the student").chunk(2)  # one pass, split in two
        with torch.no_grad():
            z_t, z_t_gen = run(self.teacher, both).require_logits("the teacher").chunk(2)
        return augmented_terms(z_s, z_t, y, z_s_gen, z_t_gen, self.alpha, self.temperature, self.adv_weight)


class AdversarialKD(Distiller):
    """The continuous maximisation step: KD on the inputs plus KD on inputs moved to where teacher and student
    disagree: ``{"ce", "kd"}`` on ``x``, ``{"adv"}`` on ``x' = x + delta`` (:func:`augmented_terms`).

    :meth:`perturb` finds ``delta`` by ``steps`` steps of normalised gradient ascent on
    ``KL(p_t(x + delta) ‖ p_s(x + delta))`` at ``T = 1``, each of length ``epsilon / steps`` (per example, in the
    L2 norm), then projects ``delta`` back onto the ball of radius ``epsilon``. ``random=True`` is the control: a
    random direction of length ``epsilon``. ``clamp=(lo, hi)`` keeps ``x'`` in the data's range (e.g. ``(0, 1)``
    for digits); the default leaves it free. Inputs are float tensors; any leading dim is the batch.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, alpha: float = 0.5, temperature: float = 1.0,
                 adv_weight: float = 1 / 3, epsilon: float = 1.0, steps: int = 3, random: bool = False,
                 clamp: tuple[float, float] | None = None):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module")
        super().__init__(student, teacher)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.adv_weight = check_unit_interval("adv_weight", adv_weight)
        self.epsilon = check_nonnegative("epsilon", epsilon)
        self.steps = check_positive_int("steps", steps)
        self.random = bool(random)
        if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
            raise ValueError(f"clamp must be None or (low, high) with low < high, got {clamp!r}")
        self.clamp = clamp

    def divergence(self, x: torch.Tensor) -> torch.Tensor:
        """``KL(p_t(x) ‖ p_s(x))`` at ``T = 1``, batch mean, differentiable in ``x`` (and in the student)."""
        z_s = run(self.student, x).require_logits("the student")
        z_t = run(self.teacher, x).require_logits("the teacher")
        return losses.kd_loss(z_s, z_t, 1.0)

    @staticmethod
    def _unit(v: torch.Tensor) -> torch.Tensor:
        """Each example's slice scaled to L2 norm 1 (0 stays 0)."""
        norms = v.flatten(1).norm(dim=1).clamp_min(1e-12)
        return v / norms.view(-1, *[1] * (v.dim() - 1))

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """``x' = x + delta`` with ``‖delta‖ <= epsilon`` per example, by gradient ascent on the divergence (or a
        random direction). The student's parameters get no gradient from it."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("AdversarialKD perturbs float input tensors")
        x = x.detach()
        if self.random:
            delta = self.epsilon * self._unit(torch.randn_like(x))
        else:
            delta = torch.zeros_like(x)
            for _ in range(self.steps):
                x_adv = (x + delta).requires_grad_(True)
                with torch.enable_grad():                                             # also under no_grad
                    (g,) = torch.autograd.grad(self.divergence(x_adv), x_adv)
                delta = delta + (self.epsilon / self.steps) * self._unit(g)
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (self.epsilon / norms).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))  # onto the ball
        x_adv = x + delta
        return x_adv.clamp(*self.clamp) if self.clamp is not None else x_adv

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None:
            raise ValueError("AdversarialKD needs labels for the cross-entropy term on the original batch")
        x_adv = self.perturb(x) if self.epsilon > 0 else x
        z_s = run(self.student, x).require_logits("the student")
        z_s_adv = run(self.student, x_adv).require_logits("the student")
        with torch.no_grad():
            z_t = run(self.teacher, x).require_logits("the teacher")
            z_t_adv = run(self.teacher, x_adv).require_logits("the teacher")
        return augmented_terms(z_s, z_t, y, z_s_adv, z_t_adv, self.alpha, self.temperature, self.adv_weight)


"""MATE-KD and its continuous version: the Gumbel-softmax relaxation, the masked-LM generator, the maximisation and
minimisation steps, checked against formulas recomputed another way, finite differences and known limits."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kdedu import losses, zoo
from kdedu.methods import KD, MATEKD, AdversarialKD, MaskedLMTraining, gumbel_softmax
from kdedu.methods.mate_kd import gumbel_noise, word_embeddings
from kdedu.models import MLP, MaskedLM, SequenceClassifier, mask_tokens, small_bert
from kdedu.train import fit

VOCAB, PAD, CLS, SEP, MASK = 40, 0, 1, 2, 3
TOKENIZER = SimpleNamespace(mask_token_id=MASK, all_special_ids=[PAD, CLS, SEP, MASK])


def _bert(layers, hidden, seed):
    torch.manual_seed(seed)
    return small_bert(layers, hidden, 2, vocab_size=VOCAB, max_position_embeddings=16)


def _classifier(layers, seed):
    return SequenceClassifier(_bert(layers, 16, seed), 2, dropout=0.0)


def _generator(seed=3):
    g = MaskedLM(_bert(1, 16, seed), MASK, TOKENIZER.all_special_ids)
    g.tokenizer = TOKENIZER
    return g.requires_grad_(False).eval()


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (6, 9), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    ids[4:, 6:] = PAD                                                          # two padded sentences
    ids[4:, 5] = SEP
    return ids, (ids != PAD).long(), torch.tensor([0, 1, 1, 0, 1, 0])


def _method(adversarial=True, seed=0, **kwargs):
    teacher = _classifier(2, seed=1).eval().requires_grad_(False)
    student = _classifier(1, seed=2)
    kwargs = {"generator_lr": 1e-2, "generator_steps": 1, "student_steps": 1, **kwargs}
    return MATEKD(student, teacher, _generator(), adversarial=adversarial, seed=seed, **kwargs)


# --- Gumbel-softmax ----------------------------------------------------------------------------------------------
def test_gumbel_softmax_is_the_formula_with_its_noise():
    g = torch.Generator().manual_seed(1)
    z, noise = torch.randn(4, 7, generator=g), gumbel_noise((4, 7), g)
    for tau in (0.5, 1.0, 3.0):
        zz, nn_ = z.double().numpy(), noise.double().numpy()
        logp = zz - np.log(np.exp(zz).sum(-1, keepdims=True))                 # log-softmax, written out
        e = np.exp((logp + nn_) / tau)
        expected = e / e.sum(-1, keepdims=True)
        got = gumbel_softmax(z, tau, hard=False, noise=noise)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_gumbel_max_samples_follow_the_softmax():
    """argmax(log p + g) is an exact sample of p: frequencies within 4.5 binomial standard deviations."""
    p = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    n = 40000
    hard = gumbel_softmax(p.log().expand(n, -1).clone(), 1.0, hard=True)
    freq = hard.mean(0)
    assert torch.all((freq - p).abs() <= 4.5 * (p * (1 - p) / n).sqrt())
    torch.testing.assert_close(hard, F.one_hot(hard.argmax(-1), 5).float())   # one-hot rows (to rounding)


def test_hard_sample_is_one_hot_with_the_soft_gradient():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 6, generator=g, requires_grad=True)
    noise, w = gumbel_noise((3, 6), g), torch.randn(3, 6, generator=g)
    hard = gumbel_softmax(z, 0.7, hard=True, noise=noise)
    torch.testing.assert_close(hard.detach(), F.one_hot((z.log_softmax(-1) + noise).argmax(-1), 6).float())
    (grad_hard,) = torch.autograd.grad((hard * w).sum(), z)
    (grad_soft,) = torch.autograd.grad((gumbel_softmax(z, 0.7, hard=False, noise=noise) * w).sum(), z)
    torch.testing.assert_close(grad_hard, grad_soft)                            # straight-through


def test_low_temperature_limit_is_the_gumbel_max_one_hot():
    g = torch.Generator().manual_seed(3)
    z, noise = torch.randn(5, 8, generator=g, dtype=torch.float64), gumbel_noise((5, 8), g, dtype=torch.float64)
    soft = gumbel_softmax(z, 1e-3, hard=False, noise=noise)
    torch.testing.assert_close(soft, gumbel_softmax(z, 1e-3, hard=True, noise=noise).detach(), atol=1e-6, rtol=0)


def test_gumbel_softmax_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        gumbel_softmax(torch.randn(2, 3), tau=0.0)
    with pytest.raises(TypeError, match="floating"):
        gumbel_softmax(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="noise"):
        gumbel_softmax(torch.randn(2, 3), noise=torch.randn(3, 2))


# --- masking and the masked LM --------------------------------------------------------------------------------------
def test_mask_tokens_rate_and_specials(batch):
    ids = torch.randint(4, VOCAB, (400, 50), generator=torch.Generator().manual_seed(4))
    ids[:, 0], ids[:, 40:] = CLS, PAD
    masked, pos = mask_tokens(ids, MASK, TOKENIZER.all_special_ids, 0.3, torch.Generator().manual_seed(5))
    n = 400 * 39
    assert abs(pos.sum().item() / n - 0.3) <= 4 * math.sqrt(0.3 * 0.7 / n)
    assert not pos[:, 0].any() and not pos[:, 40:].any()                        # never [CLS] or padding
    assert torch.equal(masked[pos], torch.full((int(pos.sum()),), MASK)) and torch.equal(masked[~pos], ids[~pos])
    assert not mask_tokens(ids, MASK, TOKENIZER.all_special_ids, 0.0)[1].any()
    assert torch.equal(mask_tokens(ids, MASK, TOKENIZER.all_special_ids, 1.0)[1], ids > SEP)
    with pytest.raises(ValueError, match="rate"):
        mask_tokens(ids, MASK, (), 1.5)


def test_masked_lm_ties_its_output_to_the_embeddings(batch):
    ids, mask, _ = batch
    model = _generator()
    z = model(ids, mask)                                                       # (B, L, V)
    assert z.shape == (*ids.shape, VOCAB)
    h = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = model.transform(h) @ model.encoder.embeddings.word_embeddings.weight.T + model.bias
    torch.testing.assert_close(z, expected)
    pos = ids > SEP
    torch.testing.assert_close(model(ids, mask, positions=pos), z[pos])         # only the asked-for rows
    n_head = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.encoder.parameters())
    assert n_head == 16 * 16 + 16 + 2 * 16 + VOCAB                              # H^2 + H + 2H (LayerNorm) + V


def test_classifier_reads_inputs_embeds_like_ids(batch):
    ids, mask, _ = batch
    model = _classifier(1, seed=0).eval()
    E = word_embeddings(model).weight
    torch.testing.assert_close(model(inputs_embeds=E[ids], attention_mask=mask), model(ids, mask))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=E[ids])


# --- the maximisation step -----------------------------------------------------------------------------------------
def _relaxed_divergence(method, ids, mask, pos, noise, hard=False):
    masked = ids.masked_fill(pos, MASK)
    soft = gumbel_softmax(method.fill_logits(masked, mask, pos), method.tau, hard=hard, noise=noise)
    return method.divergence(ids, mask, pos, soft)


def test_gumbel_softmax_generator_passes_gradients_to_its_parameters(batch):
    """Every trainable generator parameter gets a gradient through the relaxation, and it is the true one: a central
    finite difference of the relaxed divergence along a random direction in parameter space agrees."""
    ids, mask, _ = batch
    method = _method().double().eval()
    pos = mask_tokens(ids, MASK, TOKENIZER.all_special_ids, 0.3, torch.Generator().manual_seed(6))[1]
    noise = gumbel_noise((int(pos.sum()), VOCAB), torch.Generator().manual_seed(7), dtype=torch.float64)
    params = [p for p in method.generator.parameters() if p.requires_grad]
    assert params and all(p is not word_embeddings(method.generator).weight for p in params)
    grads = torch.autograd.grad(_relaxed_divergence(method, ids, mask, pos, noise), params)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    direction = [torch.randn_like(p) for p in params]
    h = 1e-5
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * h * d)
            values.append(_relaxed_divergence(method, ids, mask, pos, noise).item())
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * h * d)
    finite_difference = (values[0] - values[1]) / (2 * h)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True)).item()
    assert finite_difference == pytest.approx(analytic, rel=1e-4, abs=1e-9)


def test_a_maximisation_step_raises_the_divergence_on_a_fixed_batch(batch):
    """One update on a fixed batch, mask and noise: the divergence on the generator's (relaxed) output goes up, and
    the student and teacher do not move."""
    ids, mask, _ = batch
    for seed in range(3):
        method = _method(seed=seed, generator_lr=1e-3).eval()
        pos = mask_tokens(ids, MASK, TOKENIZER.all_special_ids, 0.3, torch.Generator().manual_seed(10 + seed))[1]
        noise = gumbel_noise((int(pos.sum()), VOCAB), torch.Generator().manual_seed(20 + seed))
        students = [p.clone() for p in method.student.parameters()]
        teachers = [p.clone() for p in method.teacher.parameters()]
        with torch.no_grad():
            before = _relaxed_divergence(method, ids, mask, pos, noise).item()
        logged = method.maximise(ids, mask, noise=noise, positions=pos)
        with torch.no_grad():
            after = _relaxed_divergence(method, ids, mask, pos, noise).item()
            hard_before = _relaxed_divergence(_method(seed=seed).eval(), ids, mask, pos, noise, hard=True).item()
        assert after > before
        assert logged == pytest.approx(hard_before, rel=1e-5)                   # it logs the hard sample's KL
        assert all(torch.equal(p, q) for p, q in zip(students, method.student.parameters(), strict=True))
        assert all(torch.equal(p, q) for p, q in zip(teachers, method.teacher.parameters(), strict=True))
        assert all(p.grad is None for p in method.student.parameters())


def test_maximisation_steers_the_sampled_text_to_where_the_models_disagree(batch):
    """With the straight-through estimator (hard samples, as the paper's code), the generator learns to write the
    tokens on which teacher and student disagree. The student is the teacher with the word vectors of five tokens
    ("hot") moved; after 30 updates the generator puts more mass on them, and the divergence averaged over many
    samples of its fills rises, on every seed."""
    ids, mask, _ = batch
    hot = list(range(30, 35))
    pos = mask_tokens(ids, MASK, TOKENIZER.all_special_ids, 0.4, torch.Generator().manual_seed(30))[1]
    masked = ids.masked_fill(pos, MASK)
    noises = [gumbel_noise((int(pos.sum()), VOCAB), torch.Generator().manual_seed(40 + i)) for i in range(32)]

    def mean_kl_and_hot_mass(method):
        with torch.no_grad():
            kl = np.mean([_relaxed_divergence(method, ids, mask, pos, n, hard=True).item() for n in noises])
            return kl, method.fill_logits(masked, mask, pos).softmax(-1)[:, hot].sum(-1).mean().item()

    gains = []
    for seed in range(5):
        teacher = _classifier(1, seed=1).eval().requires_grad_(False)
        student = copy.deepcopy(teacher).requires_grad_(True)
        with torch.no_grad():
            word_embeddings(student).weight[hot] += 5.0 * torch.randn(len(hot), 16,
                                                                     generator=torch.Generator().manual_seed(seed))
        method = MATEKD(student, teacher, _generator(), generator_lr=0.1, seed=seed).eval()
        kl0, hot0 = mean_kl_and_hot_mass(method)
        for _ in range(30):
            method.maximise(ids, mask, positions=pos)                            # fresh noise each update
        kl1, hot1 = mean_kl_and_hot_mass(method)
        assert kl1 > 1.2 * kl0
        gains.append(hot1 - hot0)
    assert np.mean(gains) > 0.2


# --- generation and the minimisation step --------------------------------------------------------------------------
def test_generate_rewrites_about_rate_of_the_real_tokens(batch):
    ids, mask, _ = batch
    ids = ids.repeat(40, 1)
    method = _method(adversarial=False)
    new, pos = method.generate(ids)
    real = ~torch.isin(ids, torch.tensor(TOKENIZER.all_special_ids))
    assert torch.equal(new[~pos], ids[~pos]) and not pos[~real].any()
    assert abs(pos.sum().item() / real.sum().item() - 0.3) < 0.05
    assert not torch.isin(new[pos], torch.tensor(TOKENIZER.all_special_ids)).any()   # no [MASK], [PAD], ... written
    again, pos2 = _method(adversarial=True).generate(ids)                     # the same seed: the same positions
    assert torch.equal(pos, pos2)


def test_minimisation_terms_are_the_decks_loss_plus_kd_on_the_generated_batch(batch):
    ids, mask, y = batch
    method = _method(adversarial=False, alpha=0.3, temperature=2.0, adv_weight=0.25).eval()
    new_ids, _ = _method(adversarial=False).eval().generate(ids, mask)          # the same generation stream
    terms = method({"input_ids": ids, "attention_mask": mask}, y)
    assert set(terms) == {"ce", "kd", "adv"}
    with torch.no_grad():
        z_s, z_t = method.student(ids, mask), method.teacher(ids, mask)
        z_s2, z_t2 = method.student(new_ids, mask).double(), method.teacher(new_ids, mask).double()
    torch.testing.assert_close(terms["ce"] + terms["kd"], 0.75 * losses.distillation_loss(z_s, z_t, y, 0.3, 2.0))
    p_t, log_p_s = (z_t2 / 2).softmax(-1), (z_s2 / 2).log_softmax(-1)          # T^2 KL(p_t || p_s), written out
    adv = 0.25 * 4 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert terms["adv"].item() == pytest.approx(adv.item(), rel=1e-5)


def test_random_fills_keep_the_generator_and_mate_trains_its_own_copy(batch):
    ids, mask, y = batch
    loader = DataLoader(TensorDataset(ids, y), batch_size=3)
    original = _generator()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    runs = {}
    for adversarial in (False, True):
        method = MATEKD(_classifier(1, seed=2), _classifier(2, seed=1), original, generator_lr=1e-2,
                        generator_steps=2, student_steps=1, adversarial=adversarial, seed=0)
        fit(method, loader, None, num_epochs=1, lr=1e-3, seed=0, progress=False)
        runs[adversarial] = method
        moved = any(not torch.equal(v, method.generator.state_dict()[k]) for k, v in before.items())
        assert moved == adversarial
        assert len(method.generator_log) == (4 if adversarial else 0)           # 2 batches x 2 updates
        assert not any(p is q for p in method.trainable_parameters() for q in method.generator.parameters())
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in before.items())  # the cached one is untouched
    assert torch.equal(word_embeddings(runs[True].generator).weight, word_embeddings(original).weight)


def test_mate_kd_rejects_bad_setups():
    teacher, student = _classifier(2, seed=1), _classifier(1, seed=2)
    with pytest.raises(ValueError, match="vocabulary"):
        other = MaskedLM(small_bert(1, 16, 2, vocab_size=VOCAB + 1, max_position_embeddings=16), MASK)
        MATEKD(student, teacher, other, tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="tokenizer"):
        MATEKD(student, teacher, MaskedLM(_bert(1, 16, 0), MASK))
    with pytest.raises(ValueError, match="generator_steps"):
        MATEKD(student, teacher, _generator(), generator_steps=0)
    with pytest.raises(ValueError, match="alpha"):
        MATEKD(student, teacher, _generator(), alpha=2.0)


# --- the continuous version ----------------------------------------------------------------------------------------
@pytest.fixture()
def digits_like():
    g = torch.Generator().manual_seed(8)
    return torch.rand(16, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (16,), generator=g)


def _adversarial(**kwargs):
    torch.manual_seed(0)
    teacher, student = MLP(64, (32,), 10).double().eval(), MLP(64, (8,), 10).double()
    return AdversarialKD(student, teacher.requires_grad_(False), **kwargs)


def test_continuous_perturbation_follows_the_gradient_of_the_divergence(digits_like):
    """One step of length epsilon along the normalised input gradient, checked against central finite differences of
    the divergence; it raises the divergence, while a random direction of the same length raises it less."""
    x, _ = digits_like
    method = _adversarial(epsilon=0.5, steps=1).eval()
    delta = method.perturb(x) - x
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), torch.full((16,), 0.5, dtype=torch.float64))
    i, h = 3, 1e-6                                                            # one example's gradient, numerically
    xi = x[i:i + 1]
    fd = torch.zeros(64, dtype=torch.float64)
    for k in range(64):
        e = torch.zeros(64, dtype=torch.float64)
        e[k] = h
        with torch.no_grad():
            fd[k] = (method.divergence(xi + e.view(1, 1, 8, 8)) - method.divergence(xi - e.view(1, 1, 8, 8))) / (2 * h)
    torch.testing.assert_close(delta[i].flatten(), 0.5 * fd / fd.norm(), rtol=1e-5, atol=1e-8)
    per_example = {}
    for name, m in (("clean", None), ("adversarial", method), ("random", _adversarial(epsilon=0.5, random=True))):
        x2 = x if m is None else m.perturb(x)
        with torch.no_grad():
            z_s, z_t = method.student(x2.flatten(1)), method.teacher(x2.flatten(1))
            per_example[name] = losses.kd_loss(z_s, z_t, reduction="none")
    assert per_example["adversarial"].mean() > per_example["random"].mean()
    assert (per_example["adversarial"] > per_example["clean"]).all()


def test_continuous_perturbation_stays_in_the_ball_and_leaves_the_student_alone(digits_like):
    x, y = digits_like
    method = _adversarial(epsilon=0.3, steps=4, clamp=(0.0, 1.0))
    before = [p.clone() for p in method.student.parameters()]
    x2 = method.perturb(x)
    assert (x2 >= 0).all() and (x2 <= 1).all()
    assert ((x2 - x).flatten(1).norm(dim=1) <= 0.3 + 1e-9).all()
    assert all(p.grad is None for p in method.student.parameters())
    terms = method(x, y)
    assert set(terms) == {"ce", "kd", "adv"}
    assert all(torch.equal(p, q) for p, q in zip(before, method.student.parameters(), strict=True))
    plain = KD(_adversarial().student, method.teacher, alpha=0.5, temperature=1.0)
    plain.student.load_state_dict(method.student.state_dict())
    no_adv = _adversarial(adv_weight=0.0)
    no_adv.student.load_state_dict(method.student.state_dict())
    with torch.no_grad():                                                      # w = 0 is plain KD (the deck's loss)
        a, b = no_adv(x, y), plain(x, y)
    torch.testing.assert_close(a["ce"] + a["kd"], b["ce"] + b["kd"])


# --- the cached generator ------------------------------------------------------------------------------------------
def test_zoo_masked_lm_trains_once_then_loads(tmp_path):
    first = zoo.masked_lm(name="sentiment-tiny", root=tmp_path, verbose=False)
    again = zoo.masked_lm(name="sentiment-tiny", root=tmp_path, verbose=False)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    assert not any(p.requires_grad for p in again.parameters()) and not again.training
    tok = again.tokenizer
    assert tok.vocab_size == again.vocab_size == 30522
    enc = tok(["the movie was good", "the plot was not bad but the cast felt dull"], padding=True,
              return_tensors="pt")
    logits = again(enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (2, enc["input_ids"].shape[1], 30522)
    metrics = again.meta["metrics"]
    assert metrics["val_mlm_loss"] < math.log(30522) - 2                      # far from a uniform guess (ln V)
    with pytest.raises(ValueError, match="unknown recipe"):
        zoo.masked_lm(name="sentiment-tiny", root=tmp_path, verbose=False, depth=3)


def test_masked_lm_training_lowers_the_masked_token_loss(batch):
    ids, mask, y = batch
    model = MaskedLM(_bert(1, 16, 0), MASK, TOKENIZER.all_special_ids)
    objective = MaskedLMTraining(model, rate=0.5)
    loader = DataLoader(TensorDataset(ids.repeat(8, 1), y.repeat(8)), batch_size=16, shuffle=True)
    history = fit(objective, loader, None, num_epochs=15, lr=3e-3, seed=0, progress=False)
    assert history["mlm"][-1] < 0.7 * history["mlm"][0]
    with pytest.raises(TypeError, match="MaskedLM"):
        MaskedLMTraining(_classifier(1, 0))
